//! Work the service does by itself on a timer: automatic rotation of keys
//! whose period has passed, and destruction of keys whose deletion window has
//! ended. Each action is audited as `service/kms-service`.

use super::{Kms, SERVICE_PRINCIPAL};
use crate::audit::AuditEvent;
use crate::error::KmsError;
use crate::keys::{KeyState, SECONDS_PER_DAY, VersionOrigin};
use crate::store::Mutation;

/// What one maintenance pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MaintenanceReport {
    pub rotated: Vec<String>,
    pub destroyed: Vec<String>,
}

impl Kms {
    /// Rotates and destroys what is due at the clock's current time.
    pub async fn run_maintenance(&self) -> Result<MaintenanceReport, KmsError> {
        let now = self.now();
        let mut report = MaintenanceReport::default();
        let (seq, own, events) = {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            let mut mutations = Vec::new();
            let mut events = Vec::new();
            // Set once the root key cannot wrap (its token is unavailable,
            // logged): no other rotation is tried this pass (not every key,
            // one after another), but what is due for destruction, which
            // needs no root key, still is.
            let mut cannot_rotate = false;
            for entry in state.keys.values() {
                let r = &entry.record;
                if r.state == KeyState::PendingDeletion && r.deletion_date.is_some_and(|d| d <= now)
                {
                    mutations.push(Mutation::DeleteKey {
                        key_id: r.key_id.clone(),
                    });
                    // Nothing of its backing keys stays in memory either.
                    for version in entry.versions.keys() {
                        self.root
                            .forget(&crate::keys::wrap_label(&r.key_id, *version));
                    }
                    report.destroyed.push(r.key_id.clone());
                    events.push(("DeleteKey", r.key_id.clone(), None));
                } else if r.state == KeyState::Enabled
                    && !cannot_rotate
                    && let (Some(period), Some(next)) = (r.rotation_period_days, r.next_rotation)
                    && next <= now
                {
                    let mut record = r.clone();
                    record.current_version += 1;
                    record.next_rotation = Some(now + i64::from(period) * SECONDS_PER_DAY);
                    let version = match super::key_ops::new_version_for(
                        self,
                        &record,
                        record.current_version,
                        VersionOrigin::AutomaticRotation,
                        now,
                    ) {
                        Ok(version) => version,
                        // The rotations are due still: the next pass tries
                        // again.
                        Err(_) => {
                            cannot_rotate = true;
                            continue;
                        }
                    };
                    events.push(("RotateKey", r.key_id.clone(), Some(record.current_version)));
                    report.rotated.push(r.key_id.clone());
                    mutations.push(Mutation::PutKeyVersion(version));
                    mutations.push(Mutation::PutKey(record));
                }
            }
            for m in &mutations {
                state.apply(m)?;
            }
            // Queued under the state lock, so commit order is apply order.
            let (seq, own) = if mutations.is_empty() {
                (self.committer.last_enqueued(), vec![])
            } else {
                let seq = self.committer.enqueue_held(mutations)?;
                (seq, vec![seq])
            };
            (seq, own, events)
        };
        let records = events
            .into_iter()
            .map(|(name, key_id, version)| AuditEvent {
                request_id: uuid::Uuid::new_v4().to_string(),
                event_name: name.into(),
                principal: Some(SERVICE_PRINCIPAL.into()),
                decision: "Allow".into(),
                resources: vec![format!("key/{key_id}")],
                key_id: Some(key_id),
                key_version: version,
                ..AuditEvent::default()
            })
            .collect();
        // The changes are committed only once every record is durable.
        self.settle(records, own).await?;
        self.committer.wait_durable(seq).await?;
        Ok(report)
    }
}
