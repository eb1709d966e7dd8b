//! Idempotency records: the first answer to a key, kept for the idempotency window.

use super::*;

impl Mongo {
    /// The first answer to an idempotency key: its sequences and request fingerprint.
    pub async fn idempotency(&self, key: &str) -> Result<Option<(Vec<u64>, u64)>, StoreError> {
        self.bounded("idempotency", self.idempotency_once(key))
            .await
    }

    async fn idempotency_once(&self, key: &str) -> Result<Option<(Vec<u64>, u64)>, StoreError> {
        let found = self
            .idempotency
            .find_one(doc! { "_id": key, "expires": { "$gt": DateTime::now() } })
            .await
            .map_err(|e| self.failed(e))?;
        Ok(found.and_then(|d| {
            let seqs = d
                .get_array("seqs")
                .ok()?
                .iter()
                .filter_map(Bson::as_i64)
                .map(|s| s as u64)
                .collect();
            Some((seqs, d.get_i64("fingerprint").ok()? as u64))
        }))
    }

    /// Records the answer to an idempotency key for the idempotency window.
    pub async fn remember(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        self.remember_at(key, seqs, fingerprint, self.expiry())
            .await
    }

    /// Records the answer to a key published at `time_ms`, until the idempotency window from
    /// then (nothing once it has passed); a key already recorded keeps its first answer. What the
    /// archiver does for a key whose ingest could not record it.
    pub async fn remember_published(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
        time_ms: u64,
    ) -> Result<(), StoreError> {
        let window = i64::try_from(self.idempotency_window.as_millis()).unwrap_or(i64::MAX);
        let expires = i64::try_from(time_ms)
            .unwrap_or(i64::MAX)
            .saturating_add(window);
        if expires <= DateTime::now().timestamp_millis() {
            return Ok(());
        }
        self.remember_at(key, seqs, fingerprint, DateTime::from_millis(expires))
            .await
    }

    async fn remember_at(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
        expires: DateTime,
    ) -> Result<(), StoreError> {
        let seqs: Vec<i64> = seqs.iter().map(|&s| seq(s)).collect();
        let write = async {
            self.idempotency
                .update_one(
                    doc! { "_id": key },
                    doc! { "$setOnInsert": { "seqs": seqs, "fingerprint": fingerprint as i64, "expires": expires } },
                )
                .upsert(true)
                .await
                .map_err(|e| self.failed(e))
        };
        self.bounded("remember", write).await?;
        Ok(())
    }

    pub(super) fn expiry(&self) -> DateTime {
        DateTime::from_millis(
            DateTime::now().timestamp_millis() + self.idempotency_window.as_millis() as i64,
        )
    }
}
