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
        self.bounded("remember", self.remember_once(key, seqs, fingerprint))
            .await
    }

    async fn remember_once(
        &self,
        key: &str,
        seqs: &[u64],
        fingerprint: u64,
    ) -> Result<(), StoreError> {
        let expires = self.expiry();
        let seqs: Vec<i64> = seqs.iter().map(|&s| seq(s)).collect();
        self.idempotency
            .update_one(
                doc! { "_id": key },
                doc! { "$setOnInsert": { "seqs": seqs, "fingerprint": fingerprint as i64, "expires": expires } },
            )
            .upsert(true)
            .await
            .map_err(|e| self.failed(e))?;
        Ok(())
    }

    pub(super) fn expiry(&self) -> DateTime {
        DateTime::from_millis(
            DateTime::now().timestamp_millis() + self.idempotency_window.as_millis() as i64,
        )
    }
}
