//! The revision of what `/circuit-status` shows: bumped on each transition, settings or mode
//! change, settings version or error, and change of endpoints, so that a reader can wait for
//! the next one (`/circuit-status?after=`).

pub struct Revision(tokio::sync::watch::Sender<u64>);

impl Default for Revision {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(0))
    }
}

impl Revision {
    pub fn current(&self) -> u64 {
        *self.0.borrow()
    }

    /// Something shown has moved: wakes whoever waits.
    pub fn bump(&self) {
        self.0.send_modify(|r| *r += 1);
    }

    /// Resolves once the revision has moved past `revision`.
    pub async fn moved_past(&self, revision: u64) {
        let mut latest = self.0.subscribe();
        // The sender lives as long as self, so this only ends by the condition.
        let _ = latest.wait_for(|newest| *newest > revision).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_reader_waits_until_the_revision_moves_past_what_it_saw() {
        let revision = Revision::default();
        let seen = revision.current();
        let wait = tokio::time::timeout(Duration::from_millis(20), revision.moved_past(seen));
        assert!(wait.await.is_err(), "nothing moved");
        revision.bump();
        assert_eq!(revision.current(), seen + 1);
        revision.moved_past(seen).await;
    }
}
