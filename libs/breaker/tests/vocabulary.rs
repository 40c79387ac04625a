//! Each word of the breaker's vocabulary has one spelling: what `as_str` gives (metrics,
//! logs, Events) is what serde writes (`/circuit-status`, the policy status).

use breaker::{Mode, Rejection, State, TransitionReason};
use serde::Serialize;

fn spelled<T: Serialize>(word: T) -> String {
    serde_json::to_value(word)
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn as_str_is_the_wire_spelling() {
    for state in State::ALL {
        assert_eq!(state.as_str(), spelled(state));
    }
    for mode in Mode::ALL {
        assert_eq!(mode.as_str(), spelled(mode));
        assert_eq!(mode.as_str().parse::<Mode>().unwrap(), mode);
    }
    for reason in TransitionReason::ALL {
        assert_eq!(reason.as_str(), spelled(reason));
    }
    for rejection in Rejection::ALL {
        assert_eq!(rejection.as_str(), spelled(rejection));
        assert_eq!(
            rejection.outcome(),
            format!("rejected_{}", rejection.as_str())
        );
    }
}
