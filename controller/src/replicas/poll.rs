//! Asking one replica for its breaker: a long poll on `/circuit-status?after=<revision>`, and
//! the answer checked, since pods are not trusted (any pod with the label is asked).

use std::time::Duration;

use breaker_api::circuit_status::BreakerReport;
use breaker_api::policy::MAX_EJECTED;

/// How long one ask may wait for a change before it is asked again.
const LONG_POLL: &str = "30s";
const ASK_TIMEOUT: Duration = Duration::from_secs(40);
/// After a failed ask.
pub const RETRY: Duration = Duration::from_secs(1);
/// A replica's answer is read up to the largest a gateway writes (breaker-api's bounds): what a
/// pod says is bounded before it is parsed, and checked after ([`checked`]) before any of it
/// reaches the API.
use breaker_api::circuit_status::MAX_ANSWER_BYTES;
/// Transitions read from one answer, the newest last.
const MAX_TRANSITIONS: usize = breaker_api::circuit_status::bounds::TRANSITIONS;

pub struct Asker {
    http: awc::Client,
}

impl Asker {
    pub fn new() -> Self {
        Self {
            // A pod's redirect would send the controller's asks wherever the pod likes.
            http: awc::Client::builder()
                .timeout(ASK_TIMEOUT)
                .disable_redirects()
                // One connection per replica, each held by its long poll: awc's default pool
                // of 100 would leave the replicas past the 100th waiting for a connection
                // until their asks time out (shown `unreachable`). No limit: a connection per
                // v2 pod the controller follows.
                .connector(awc::Connector::new().limit(0))
                .finish(),
        }
    }

    /// The replica's breaker now, or, `after` a revision it gave, once it has moved on (or the
    /// long poll ends).
    pub async fn ask(&self, address: &str, after: Option<u64>) -> Result<BreakerReport, String> {
        let url = match after {
            Some(r) => format!("http://{address}/circuit-status?after={r}&wait={LONG_POLL}"),
            None => format!("http://{address}/circuit-status"),
        };
        match self.http.get(&url).send().await {
            Ok(mut response) if response.status().is_success() => response
                .json::<BreakerReport>()
                .limit(MAX_ANSWER_BYTES)
                .await
                .map_err(|e| e.to_string())
                .and_then(checked),
            Ok(response) => Err(format!("HTTP {}", response.status())),
            Err(err) => Err(err.to_string()),
        }
    }
}

/// A form a text field of a replica's answer must have: 1 to `max` bytes, each `allowed`.
/// (States, modes and reasons need none: they parse into the breaker's enums or fail.)
struct Form {
    what: &'static str,
    max: usize,
    allowed: fn(u8) -> bool,
}

impl Form {
    /// The first of `values` not of this form, as an error naming what it should have been.
    fn check<'a>(&self, values: impl IntoIterator<Item = &'a String>) -> Result<(), String> {
        match values
            .into_iter()
            .find(|v| !(1..=self.max).contains(&v.len()) || !v.bytes().all(self.allowed))
        {
            Some(bad) => Err(format!("not {}: {:.40?}", self.what, bad)),
            None => Ok(()),
        }
    }
}

/// An RFC 3339 time as the gateway writes it.
const TIME: Form = Form {
    what: "a time",
    max: 40,
    allowed: |b| b.is_ascii_digit() || b"TZ:.+-".contains(&b),
};
/// A pod's name (DNS subdomain) or a resourceVersion.
const NAME: Form = Form {
    what: "a name",
    max: breaker_api::circuit_status::bounds::NAME_BYTES,
    allowed: breaker_api::circuit_status::is_name_byte,
};

/// The report, if every text field that reaches the status or an Event has the form the
/// gateway gives it; lists cut to their bounds.
pub fn checked(mut report: BreakerReport) -> Result<BreakerReport, String> {
    let times = report
        .last_transition
        .iter()
        .chain(&report.transitions)
        .map(|t| &t.at)
        .chain(
            report
                .endpoints
                .iter()
                .filter_map(|e| e.ejected_since.as_ref()),
        );
    TIME.check(times)?;
    // (no version yet is an empty one)
    let names = std::iter::once(&report.config_version)
        .filter(|v| !v.is_empty())
        .chain(&report.ejected)
        .chain(report.endpoints.iter().map(|e| &e.name));
    NAME.check(names)?;
    report.ejected.truncate(MAX_EJECTED);
    // Only the newest transitions are Events; older ones were seen on an earlier ask.
    let keep_from = report.transitions.len().saturating_sub(MAX_TRANSITIONS);
    report.transitions.drain(..keep_from);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    pub(crate) fn answer() -> serde_json::Value {
        json!({
            "revision": 9, "state": "open", "mode": "Auto", "config_version": "3",
            "last_transition": {"seq": 1, "from": "closed", "to": "open", "reason": "consecutive_failures",
                                "mode": "Auto", "at": "2026-11-28T14:00:00.000Z"},
            "transitions": [],
            "ejected": ["rec-2"],
            "endpoints": [{"name": "rec-2", "state": "open", "ejected_since": "2026-11-28T14:00:00.000Z",
                           "ejected_reason": "consecutive_failures"}]
        })
    }

    fn read(answer: serde_json::Value) -> Result<BreakerReport, String> {
        serde_json::from_value::<BreakerReport>(answer)
            .map_err(|e| e.to_string())
            .and_then(checked)
    }

    #[test]
    fn a_replicas_answer_is_untrusted_input_checked_field_by_field_and_cut_to_its_bounds() {
        assert!(read(answer()).is_ok());
        let hostile: [(&str, serde_json::Value); 8] = [
            ("/state", json!("open\nInjected: yes")),
            ("/state", json!("x".repeat(33))),
            ("/mode", json!("Sometimes")),
            ("/last_transition/reason", json!("a <b>reason</b>")),
            ("/last_transition/at", json!("yesterday at noon")),
            ("/config_version", json!("x".repeat(254))),
            ("/ejected/0", json!("Rec 2")),
            ("/endpoints/0/ejected_since", json!("9".repeat(41))),
        ];
        for (path, value) in hostile {
            let mut bad = answer();
            *bad.pointer_mut(path).unwrap() = value.clone();
            assert!(read(bad).is_err(), "{path} = {value} was taken");
        }
        let mut many = answer();
        many["ejected"] = (0..500).map(|i| json!(format!("rec-{i}"))).collect();
        many["transitions"] = (1..=1000)
            .map(|seq| json!({"seq": seq, "from": "open", "to": "half_open", "reason": "open_duration_elapsed",
                              "mode": "Auto", "at": "2026-11-28T14:00:00.000Z"}))
            .collect();
        let report = read(many).unwrap();
        assert_eq!(report.ejected.len(), MAX_EJECTED);
        assert_eq!(report.transitions.len(), MAX_TRANSITIONS);
        assert_eq!(
            report.transitions.last().unwrap().seq,
            1000,
            "the newest are kept"
        );
    }
}
