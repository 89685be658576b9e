//! Message counters for the management API: monotonic counts kept by the core, per queue
//! and for the whole broker. Rates are worked out by whoever samples them over time (the
//! HTTP layer), so the core never looks at a clock for statistics.

/// Monotonic message counters, named as RabbitMQ's `message_stats` names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounters {
    /// Messages published (for a queue: messages that entered it).
    pub publish: u64,
    /// Deliveries to consumers that must ack.
    pub deliver: u64,
    /// Deliveries to consumers in no-ack mode.
    pub deliver_no_ack: u64,
    /// `basic.get` answers that must be acked.
    pub get: u64,
    /// `basic.get` answers in no-ack mode.
    pub get_no_ack: u64,
    /// Deliveries (of any kind) of messages delivered before.
    pub redeliver: u64,
    /// Acknowledgements.
    pub ack: u64,
    /// Publisher confirms sent (broker totals only).
    pub confirm: u64,
    /// Messages published that reached no queue (broker totals only).
    pub unroutable: u64,
}

impl MessageCounters {
    /// Counts a delivery to a consumer.
    pub fn delivered(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.deliver_no_ack += 1;
        } else {
            self.deliver += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    /// Counts an answer to `basic.get`.
    pub fn got(&mut self, no_ack: bool, redelivered: bool) {
        if no_ack {
            self.get_no_ack += 1;
        } else {
            self.get += 1;
        }
        self.redeliver += u64::from(redelivered);
    }

    /// All deliveries and gets, RabbitMQ's `deliver_get`.
    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    /// The counters by their RabbitMQ names, in a fixed order.
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("publish", self.publish),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
            ("confirm", self.confirm),
            ("return_unroutable", self.unroutable),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliver_get_sums_every_kind_of_delivery() {
        let mut c = MessageCounters::default();
        c.delivered(false, false);
        c.delivered(true, true);
        c.got(false, true);
        c.got(true, false);
        assert_eq!(c.deliver_get(), 4);
        assert_eq!(c.redeliver, 2);
        assert_eq!(c.named()[5], ("deliver_get", 4));
    }
}
