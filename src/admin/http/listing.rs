//! RabbitMQ's query parameters for listings: `name` (with `use_regex`), `sort` (with
//! `sort_reverse`), `columns`, and pages (`page`, `page_size`), with the answers RabbitMQ
//! gives to ones it refuses.

use std::collections::HashMap;

use axum::http::StatusCode;
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ok_json};

/// The name filter of a listing's query (`name`, plain or with `use_regex=true`), if any.
pub(super) fn name_filter(q: &HashMap<String, String>) -> Result<Option<NameFilter>, ApiError> {
    let Some(name) = q.get("name").filter(|n| !n.is_empty()) else {
        return Ok(None);
    };
    if flag(q, "use_regex") {
        // As RabbitMQ's: caseless, and an expression that does not compile matches nothing.
        let re = regex::RegexBuilder::new(name)
            .case_insensitive(true)
            .size_limit(1 << 20)
            .build()
            .ok();
        Ok(Some(NameFilter::Regex(re)))
    } else {
        Ok(Some(NameFilter::Contains(name.to_lowercase())))
    }
}

/// How a listing's `name` parameter selects items, ignoring case as RabbitMQ's does.
pub(super) enum NameFilter {
    /// Names containing this text (in lower case).
    Contains(String),
    /// Names the expression matches; none if it is not a valid expression.
    Regex(Option<regex::Regex>),
}

impl NameFilter {
    pub(super) fn accepts(&self, name: &str) -> bool {
        match self {
            NameFilter::Contains(part) => name.to_lowercase().contains(part.as_str()),
            NameFilter::Regex(re) => re.as_ref().is_some_and(|re| re.is_match(name)),
        }
    }
}

/// The page a listing asks for (`page`, `page_size`), if it asks for one.
#[derive(Debug, Clone, Copy)]
pub(super) struct PageRequest {
    page: usize,
    size: usize,
}

/// The most items a page holds, and how many one holds unless `page_size` says.
const MAX_PAGE_SIZE: usize = 500;
const DEFAULT_PAGE_SIZE: usize = 100;

/// Reads `page` and `page_size` as RabbitMQ does: a listing is paged when `page` is given,
/// and a page number below 1 or a size outside 1 to 500 is refused, not adjusted.
pub(super) fn page_request(q: &HashMap<String, String>) -> Result<Option<PageRequest>, ApiError> {
    let Some(page) = q.get("page") else {
        return Ok(None);
    };
    let integer = |s: &str| {
        s.parse::<i64>()
            .map_err(|_| ApiError::bad_request("Pagination parameters are invalid"))
    };
    let page = integer(page)?;
    let size = q.get("page_size").map(|s| integer(s)).transpose()?;
    let valid = |n: i64, max: usize| usize::try_from(n).is_ok_and(|n| (1..=max).contains(&n));
    if !valid(page, usize::MAX) || size.is_some_and(|n| !valid(n, MAX_PAGE_SIZE)) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_pagination_parameters",
            format!(
                "Invalid pagination parameters: page number {page}, page size {}",
                size.map_or_else(|| "undefined".to_string(), |n| n.to_string())
            ),
        ));
    }
    Ok(Some(PageRequest {
        page: page as usize,
        size: size.map_or(DEFAULT_PAGE_SIZE, |n| n as usize),
    }))
}

impl PageRequest {
    /// The index range of this page among `total` items, and the page count; an error for a
    /// page that starts past the last item (RabbitMQ's test: an empty listing has page 1).
    pub(super) fn range(self, total: usize) -> Result<(std::ops::Range<usize>, usize), ApiError> {
        let page_count = total.div_ceil(self.size);
        let start = (self.page - 1).saturating_mul(self.size);
        if start > total {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "page_out_of_range",
                format!(
                    "Page out of range, page: {} page size: {}, len: {total}",
                    self.page, self.size
                ),
            ));
        }
        Ok((start..(start + self.size).min(total), page_count))
    }

    /// RabbitMQ's paged answer: the page's items with the counts.
    pub(super) fn answer(self, items: Vec<Value>, total: usize, page_count: usize) -> ApiResult {
        ok_json(json!({
            "filtered_count": total, "item_count": items.len(), "items": items,
            "page": self.page, "page_count": page_count, "page_size": self.size,
            "total_count": total,
        }))
    }
}

/// Keeps only the `columns` a listing's query names, if it names any.
pub(super) fn pick_columns(items: Vec<Value>, q: &HashMap<String, String>) -> Vec<Value> {
    match q.get("columns").filter(|c| !c.is_empty()) {
        Some(cols) => {
            let cols: Vec<Vec<&str>> = cols.split(',').map(|c| c.split('.').collect()).collect();
            items.iter().map(|v| only_columns(v, &cols)).collect()
        }
        None => items,
    }
}

/// Applies `name` (+ `use_regex`), `sort` (+ `sort_reverse`), `columns` and pagination
/// (`page`, `page_size`) to a listing, as RabbitMQ's API does.
pub(super) fn listing(mut items: Vec<Value>, q: &HashMap<String, String>) -> ApiResult {
    if let Some(filter) = name_filter(q)? {
        items.retain(|v| v["name"].as_str().is_some_and(|s| filter.accepts(s)));
    }
    if let Some(key) = q.get("sort").filter(|k| !k.is_empty()) {
        let path: Vec<&str> = key.split('.').collect();
        // Each item's key is looked up, and written out as text if it is compared as
        // text, once, not at every comparison.
        let mut keyed: Vec<(SortKey, Value)> = items
            .into_iter()
            .map(|v| {
                let k = path
                    .iter()
                    .try_fold(&v, |v, k| v.get(k))
                    .cloned()
                    .unwrap_or(Value::Null);
                (SortKey::new(k), v)
            })
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0));
        items = keyed.into_iter().map(|(_, v)| v).collect();
        if flag(q, "sort_reverse") {
            items.reverse();
        }
    }
    let items = pick_columns(items, q);
    let Some(page) = page_request(q)? else {
        return ok_json(Value::Array(items));
    };
    let total = items.len();
    let (range, page_count) = page.range(total)?;
    let slice: Vec<Value> = items
        .into_iter()
        .skip(range.start)
        .take(range.len())
        .collect();
    page.answer(slice, total, page_count)
}

/// A listing's sort key: numbers compare as numbers, strings as strings, a missing key
/// first, and anything else (mixed kinds, objects, arrays) as its JSON text, written once.
struct SortKey {
    value: Value,
    text: String,
}

impl SortKey {
    fn new(value: Value) -> Self {
        let text = match &value {
            Value::Null => String::new(),
            v => v.to_string(),
        };
        SortKey { value, text }
    }

    fn cmp(&self, other: &SortKey) -> std::cmp::Ordering {
        match (&self.value, &other.value) {
            (Value::Number(x), Value::Number(y)) => x
                .as_f64()
                .partial_cmp(&y.as_f64())
                .unwrap_or(std::cmp::Ordering::Equal),
            (Value::String(x), Value::String(y)) => x.cmp(y),
            (Value::Null, Value::Null) => std::cmp::Ordering::Equal,
            (Value::Null, _) => std::cmp::Ordering::Less,
            (_, Value::Null) => std::cmp::Ordering::Greater,
            _ => self.text.cmp(&other.text),
        }
    }
}

/// Keeps the listed columns (paths such as "a" or "a.b") of an object. A path is walked
/// only as deep as the object goes, whatever its length, and without recursion.
fn only_columns(v: &Value, cols: &[Vec<&str>]) -> Value {
    let mut out = Value::Object(serde_json::Map::new());
    for path in cols {
        let Some((last, parents)) = path.split_last() else {
            continue;
        };
        let Some(leaf) = path.iter().try_fold(v, |v, k| v.get(k)) else {
            continue;
        };
        let mut slot = &mut out;
        for k in parents {
            let Value::Object(m) = slot else { break };
            slot = m
                .entry(k.to_string())
                .or_insert_with(|| Value::Object(serde_json::Map::new()));
        }
        if let Value::Object(m) = slot {
            m.insert(last.to_string(), leaf.clone());
        }
    }
    out
}

/// A query parameter as a boolean ("true").
pub(super) fn flag(q: &HashMap<String, String>, key: &str) -> bool {
    q.get(key).is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_pick_nested_fields_and_long_paths_cost_nothing() {
        let v = json!({"name": "q", "message_stats": {"publish": 3, "ack": 1}, "x": 1});
        let cols = vec![
            vec!["name"],
            vec!["message_stats", "publish"],
            vec!["nope", "a"],
        ];
        assert_eq!(
            only_columns(&v, &cols),
            json!({"name": "q", "message_stats": {"publish": 3}})
        );
        let long: Vec<&str> = std::iter::repeat_n("message_stats", 200_000).collect();
        assert_eq!(only_columns(&v, &[long]), json!({}));
    }

    fn query(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// RabbitMQ 3.10's answers, as its API gave them.
    #[test]
    fn pages_are_refused_as_rabbitmq_refuses_them() {
        let refused = |pairs: &[(&str, &str)]| {
            let e = page_request(&query(pairs)).expect_err("refused");
            (e.status.as_u16(), e.error, e.reason)
        };
        assert_eq!(
            refused(&[("page", "abc")]),
            (
                400,
                "bad_request",
                "Pagination parameters are invalid".into()
            )
        );
        assert_eq!(
            refused(&[("page", "0")]),
            (
                400,
                "invalid_pagination_parameters",
                "Invalid pagination parameters: page number 0, page size undefined".into()
            )
        );
        assert_eq!(
            refused(&[("page", "1"), ("page_size", "501")]).2,
            "Invalid pagination parameters: page number 1, page size 501"
        );
        assert_eq!(
            refused(&[("page", "1"), ("page_size", "0")]).1,
            "invalid_pagination_parameters"
        );
        // `page_size` alone, or `pagination` alone, asks for no page.
        assert!(
            page_request(&query(&[("page_size", "5"), ("pagination", "true")]))
                .unwrap()
                .is_none()
        );
        let page = |p: usize, size: usize| PageRequest { page: p, size };
        // An empty listing has page 1 (of 0); page 2 of one item of size 1 is empty.
        assert_eq!(
            page(1, 100).range(0).map(|(r, n)| (r, n)).ok(),
            Some((0..0, 0))
        );
        assert_eq!(page(2, 1).range(1).ok(), Some((1..1, 1)));
        assert_eq!(page(2, 10).range(25).ok(), Some((10..20, 3)));
        let e = page(2, 100).range(0).expect_err("out of range");
        assert_eq!(
            (e.error, e.reason.as_str()),
            (
                "page_out_of_range",
                "Page out of range, page: 2 page size: 100, len: 0"
            )
        );
        assert!(page(usize::MAX, 500).range(3).is_err());
    }

    #[test]
    fn name_filters_ignore_case_and_a_bad_expression_matches_nothing() {
        let filter = |pairs: &[(&str, &str)]| name_filter(&query(pairs)).unwrap().unwrap();
        assert!(filter(&[("name", "casequeue")]).accepts("a.CaseQueue.b"));
        assert!(!filter(&[("name", "other")]).accepts("CaseQueue"));
        let re = filter(&[("name", "^case"), ("use_regex", "true")]);
        assert!(re.accepts("CaseQueue") && !re.accepts("aCase"));
        assert!(!filter(&[("name", "("), ("use_regex", "true")]).accepts("("));
    }
}
