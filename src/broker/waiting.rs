//! The queues a connection's consumers left waiting: a search of each found no consumer
//! that could take a message, and the consumers of this connection could not because of
//! it (its output backlog, a parked get) or because of their channel (prefetch, flow).
//! When the connection or a channel frees room, exactly those queues search again; a
//! queue nobody can serve costs nothing per message published to it meanwhile.

use std::collections::BTreeSet;

use super::exchange::QueueId;

/// A connection's waiting queues, by channel and by what holds them.
#[derive(Debug, Default)]
pub struct WaitingQueues {
    /// Held by the connection: freed when its output drains or its parked get is answered.
    on_connection: BTreeSet<(u16, QueueId)>,
    /// Held by the channel: freed by a settlement, `basic.qos`, `basic.recover` or flow
    /// resumed on it.
    on_channel: BTreeSet<(u16, QueueId)>,
}

impl WaitingQueues {
    /// Records that `queue` waits for channel `channel` (`by_connection`: for its
    /// connection).
    pub fn note(&mut self, channel: u16, queue: QueueId, by_connection: bool) {
        if by_connection {
            self.on_connection.insert((channel, queue));
        } else {
            self.on_channel.insert((channel, queue));
        }
    }

    /// Takes out the queues that wait for channel `channel`.
    pub fn take_channel(&mut self, channel: u16) -> Vec<QueueId> {
        take_range(&mut self.on_channel, channel)
    }

    /// Takes out the queues that wait for the connection, with the channel each waits on.
    pub fn take_connection(&mut self) -> Vec<(u16, QueueId)> {
        std::mem::take(&mut self.on_connection)
            .into_iter()
            .collect()
    }

    /// Forgets `queue` for channel `channel` (its last consumer there left).
    pub fn forget(&mut self, channel: u16, queue: QueueId) {
        self.on_connection.remove(&(channel, queue));
        self.on_channel.remove(&(channel, queue));
    }

    /// Forgets every queue of channel `channel` (it closed).
    pub fn forget_channel(&mut self, channel: u16) {
        take_range(&mut self.on_channel, channel);
        take_range(&mut self.on_connection, channel);
    }

    /// Whether `queue` waits for channel `channel` or its connection.
    pub fn waits(&self, channel: u16, queue: QueueId) -> bool {
        self.on_connection.contains(&(channel, queue))
            || self.on_channel.contains(&(channel, queue))
    }

    /// Every (channel, queue) entry, for the invariant check.
    pub fn entries(&self) -> impl Iterator<Item = (u16, QueueId)> + '_ {
        self.on_connection.iter().chain(&self.on_channel).copied()
    }
}

/// Takes the entries of channel `channel` out of `set`; returns their queues.
fn take_range(set: &mut BTreeSet<(u16, QueueId)>, channel: u16) -> Vec<QueueId> {
    let queues: Vec<QueueId> = set
        .range((channel, 0)..=(channel, QueueId::MAX))
        .map(|(_, q)| *q)
        .collect();
    for q in &queues {
        set.remove(&(channel, *q));
    }
    queues
}
