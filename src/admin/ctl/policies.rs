//! `set_policy`, `clear_policy`, `list_policies` and their operator-policy twins, with
//! rabbitmqctl's messages, over `/api/policies` and `/api/operator-policies`.

use std::io::Write;

use serde_json::{Value, json};

use super::client::{reason_of, seg};
use super::{Ctl, CtlResult, EX_UNAVAILABLE, Failure};

/// The columns of `list_policies`.
const POLICY_COLUMNS: &[super::table::Column] = &[
    ("vhost", "vhost"),
    ("name", "name"),
    ("pattern", "pattern"),
    ("apply-to", "apply-to"),
    ("definition", "definition"),
    ("priority", "priority"),
];

fn api(operator: bool) -> &'static str {
    if operator {
        "/api/operator-policies"
    } else {
        "/api/policies"
    }
}

fn failed(message: String) -> Failure {
    Failure {
        code: EX_UNAVAILABLE,
        message: format!("Error:\n{message}"),
    }
}

impl<W: Write> Ctl<W> {
    pub(super) fn set_policy(
        &mut self,
        operator: bool,
        name: &str,
        pattern: &str,
        definition: &str,
    ) -> CtlResult {
        let vhost = self.vhost();
        let priority = self.inv.priority.unwrap_or(0);
        let what = if operator {
            "operator policy override"
        } else {
            "policy"
        };
        self.info(format!(
            "Setting {what} \"{name}\" for pattern \"{pattern}\" to \"{definition}\" with priority \"{priority}\" for vhost \"{vhost}\" ..."
        ));
        let definition: Value = serde_json::from_str(definition)
            .map_err(|e| failed(format!("JSON decoding error. Reason: {e}")))?;
        let mut body = json!({
            "pattern": pattern,
            "definition": definition,
            "priority": priority,
        });
        if let Some(apply_to) = &self.inv.apply_to {
            body["apply-to"] = json!(apply_to);
        }
        let path = format!("{}/{}/{}", api(operator), seg(&vhost), seg(name));
        let a = self.client.request("PUT", &path, Some(&body), &[])?;
        match a.status {
            200..=299 => Ok(()),
            _ => Err(failed(reason_of(&a))),
        }
    }

    pub(super) fn clear_policy(&mut self, operator: bool, name: &str) -> CtlResult {
        let vhost = self.vhost();
        let what = if operator {
            "operator policy"
        } else {
            "policy"
        };
        self.info(format!(
            "Clearing {what} \"{name}\" on vhost \"{vhost}\" ..."
        ));
        let path = format!("{}/{}/{}", api(operator), seg(&vhost), seg(name));
        let a = self.client.request("DELETE", &path, None, &[])?;
        match a.status {
            200..=299 => Ok(()),
            _ => Err(failed(reason_of(&a))),
        }
    }

    pub(super) fn list_policies(&mut self, operator: bool) -> CtlResult {
        let vhost = self.vhost();
        let what = if operator {
            "operator policy overrides"
        } else {
            "policies"
        };
        self.info(format!("Listing {what} for vhost \"{vhost}\" ..."));
        let path = format!("{}/{}", api(operator), seg(&vhost));
        let a = self.client.request("GET", &path, None, &[])?;
        if !(200..=299).contains(&a.status) {
            return Err(failed(reason_of(&a)));
        }
        // rabbitmqctl prints the definition as compact JSON.
        let rows: Vec<Value> = a
            .body
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|p| {
                let mut p = p.clone();
                p["definition"] = Value::String(p["definition"].to_string());
                p
            })
            .collect();
        let wanted: Vec<&str> = POLICY_COLUMNS.iter().map(|(n, _)| *n).collect();
        self.table(&Value::Array(rows), POLICY_COLUMNS, &wanted)
    }
}
