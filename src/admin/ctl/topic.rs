//! `set_topic_permissions`, `clear_topic_permissions`, `list_topic_permissions` and
//! `list_user_topic_permissions`, with rabbitmqctl's messages and columns.

use std::io::Write;

use serde_json::json;

use super::client::seg;
use super::table::Column;
use super::{Ctl, CtlResult};

impl<W: Write> Ctl<W> {
    pub(super) fn set_topic_permissions(
        &mut self,
        user: &str,
        exchange: &str,
        write: &str,
        read: &str,
    ) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!(
            "Setting topic permissions on \"{exchange}\" for user \"{user}\" in vhost \"{vhost}\" ..."
        ));
        let body = json!({ "exchange": exchange, "write": write, "read": read });
        let path = format!("/api/topic-permissions/{}/{}", seg(&vhost), seg(user));
        self.client.must("PUT", &path, Some(&body), &[])?;
        Ok(())
    }

    pub(super) fn clear_topic_permissions(
        &mut self,
        user: &str,
        exchange: Option<&str>,
    ) -> CtlResult {
        let vhost = self.vhost();
        let mut path = format!("/api/topic-permissions/{}/{}", seg(&vhost), seg(user));
        match exchange {
            Some(x) => {
                self.info(format!(
                    "Clearing topic permissions on \"{x}\" for user \"{user}\" in vhost \"{vhost}\" ..."
                ));
                path.push('/');
                path.push_str(&seg(x));
            }
            None => self.info(format!(
                "Clearing topic permissions for user \"{user}\" in vhost \"{vhost}\" ..."
            )),
        }
        self.client.must("DELETE", &path, None, &[])?;
        Ok(())
    }

    pub(super) fn list_topic_permissions(&mut self) -> CtlResult {
        let vhost = self.vhost();
        self.info(format!(
            "Listing topic permissions for vhost \"{vhost}\" ..."
        ));
        let perms = self
            .client
            .get(&format!("/api/vhosts/{}/topic-permissions", seg(&vhost)))?;
        let cols: &[Column] = &[
            ("user", "user"),
            ("exchange", "exchange"),
            ("write", "write"),
            ("read", "read"),
        ];
        self.table(&perms, cols, &["user", "exchange", "write", "read"])
    }

    pub(super) fn list_user_topic_permissions(&mut self, user: &str) -> CtlResult {
        self.info(format!("Listing topic permissions for user \"{user}\" ..."));
        let perms = self
            .client
            .get(&format!("/api/users/{}/topic-permissions", seg(user)))?;
        let cols: &[Column] = &[
            ("vhost", "vhost"),
            ("exchange", "exchange"),
            ("write", "write"),
            ("read", "read"),
        ];
        self.table(&perms, cols, &["vhost", "exchange", "write", "read"])
    }
}
