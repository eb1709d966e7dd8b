//! Reads against one MVCC snapshot.

use std::sync::Arc;

use herald_core::{Event, Topic, TopicFilter};
use redb::{ReadOnlyTable, ReadTransaction};

use super::{BY_TOPIC, EVENTS, META, META_HEAD, codec};
use crate::{Page, ReadQuery, StoreError};

/// How many rows a pattern read examines for one page before it returns what it has.
const SCAN_PER_PAGE: usize = 16_384;

/// A page of `query`, also cut after the event that brings its encoded records to `max_bytes`
/// (a page holds at least one event).
pub(super) fn page(
    txn: &ReadTransaction,
    query: &ReadQuery,
    max_bytes: usize,
) -> Result<Page, StoreError> {
    let head = txn
        .open_table(META)?
        .get(META_HEAD)?
        .map(|v| v.value())
        .unwrap_or(0);
    let events = txn.open_table(EVENTS)?;
    let limit = query.limit.max(1);
    let mut page = if query.filter.patterns().is_empty() {
        by_index(txn, &events, &query.filter, query.after, (limit, max_bytes))?
    } else {
        by_scan(&events, &query.filter, query.after, (limit, max_bytes))?
    };
    if page.end {
        page.next_after = page.next_after.max(head);
    }
    Ok(page)
}

/// Exact topics: the first `limit` sequences after `after` of each topic, merged, then fetched
/// until the page holds `max_bytes`.
fn by_index(
    txn: &ReadTransaction,
    events: &ReadOnlyTable<u64, &'static [u8]>,
    filter: &TopicFilter,
    after: u64,
    (limit, max_bytes): (usize, usize),
) -> Result<Page, StoreError> {
    let index = txn.open_table(BY_TOPIC)?;
    let mut seqs = Vec::new();
    for topic in filter.exact() {
        let t = topic.as_str();
        for entry in index.range((t, after + 1)..=(t, u64::MAX))?.take(limit + 1) {
            seqs.push(entry?.0.value().1);
        }
    }
    seqs.sort_unstable();
    let mut end = seqs.len() <= limit;
    seqs.truncate(limit);
    let (mut out, mut bytes) = (Vec::with_capacity(seqs.len()), 0);
    for &seq in &seqs {
        if bytes >= max_bytes {
            end = false;
            break;
        }
        let record = events.get(seq)?.ok_or_else(|| missing(seq))?;
        bytes += record.value().len();
        out.push(Arc::new(codec::decode(seq, record.value())?));
    }
    Ok(Page {
        next_after: out.last().map_or(after, |e| e.seq),
        events: out,
        end,
    })
}

/// Patterns: walk the log from `after`, examining at most [`SCAN_PER_PAGE`] rows, until the page
/// holds `limit` events or `max_bytes`.
fn by_scan(
    events: &ReadOnlyTable<u64, &'static [u8]>,
    filter: &TopicFilter,
    after: u64,
    (limit, max_bytes): (usize, usize),
) -> Result<Page, StoreError> {
    let mut page = Page {
        next_after: after,
        ..Page::default()
    };
    let mut bytes = 0;
    for (scanned, entry) in events.range(after + 1..)?.enumerate() {
        let (key, value) = entry?;
        let (seq, record) = (key.value(), value.value());
        page.next_after = seq;
        if filter.matches(codec::header(record)?.topic) {
            bytes += record.len();
            page.events.push(Arc::new(codec::decode(seq, record)?));
        }
        if page.events.len() >= limit || bytes >= max_bytes || scanned + 1 >= SCAN_PER_PAGE {
            return Ok(page);
        }
    }
    page.end = true;
    Ok(page)
}

fn fetch(
    events: &ReadOnlyTable<u64, &'static [u8]>,
    seqs: &[u64],
) -> Result<Vec<Arc<Event>>, StoreError> {
    let mut out = Vec::with_capacity(seqs.len());
    for &seq in seqs {
        let record = events.get(seq)?.ok_or_else(|| missing(seq))?;
        out.push(Arc::new(codec::decode(seq, record.value())?));
    }
    Ok(out)
}

fn missing(seq: u64) -> StoreError {
    StoreError::Backend(format!("index names missing event {seq}").into())
}

pub(super) fn latest(
    txn: &ReadTransaction,
    topic: &Topic,
    limit: usize,
) -> Result<Vec<Arc<Event>>, StoreError> {
    let index = txn.open_table(BY_TOPIC)?;
    let t = topic.as_str();
    let mut seqs = Vec::with_capacity(limit);
    for entry in index.range((t, 0)..=(t, u64::MAX))?.rev().take(limit) {
        seqs.push(entry?.0.value().1);
    }
    seqs.reverse();
    fetch(&txn.open_table(EVENTS)?, &seqs)
}
