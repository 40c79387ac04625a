//! An Event on the policy for each transition a replica reports, throttled: a replica's Event
//! of one kind is written at most every [`EVENT_EVERY`] (the Recorder makes repeats a series);
//! one held back is written when its window ends, so the latest always shows and a flapping
//! breaker cannot flood the API.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use breaker_api::circuit_status::TransitionRecord;
use breaker_api::Mode;
use breaker_api::State;

use super::discovery::{PodKey, ReplicaGroup};

/// At most one Event per replica, mode and kind this often.
pub const EVENT_EVERY: Duration = Duration::from_secs(30);
/// How often held-back Events are looked at.
pub const FLUSH_EVERY: Duration = Duration::from_secs(2);
/// Windows remembered; past it, those with nothing held and a window over are forgotten.
const MAX_WINDOWS: usize = 4096;

/// What a transition did to the circuit, as an Event says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    Opened,
    HalfOpened,
    Closed,
}

impl EventKind {
    fn of(to: State) -> Self {
        match to {
            State::Open => EventKind::Opened,
            State::HalfOpen => EventKind::HalfOpened,
            State::Closed => EventKind::Closed,
        }
    }

    /// The Event's reason (and the transitions metric's label).
    pub fn reason(self) -> &'static str {
        match self {
            EventKind::Opened => "CircuitOpened",
            EventKind::HalfOpened => "CircuitHalfOpened",
            EventKind::Closed => "CircuitClosed",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::HalfOpened => "half-opened",
            EventKind::Closed => "closed",
        }
    }
}

/// One transition's Event, for the policies of its replica's group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionEvent {
    pub group: ReplicaGroup,
    /// The replica's pod: each pod's Events of a kind are a series of their own.
    pub pod: String,
    pub kind: EventKind,
    mode: Mode,
    pub note: String,
}

impl TransitionEvent {
    pub fn new(group: &ReplicaGroup, pod: &str, t: &TransitionRecord) -> Self {
        let kind = EventKind::of(t.to);
        let would = if t.mode == Mode::Observe {
            "would have "
        } else {
            ""
        };
        Self {
            group: group.clone(),
            pod: pod.to_string(),
            kind,
            mode: t.mode,
            note: format!(
                "pod {pod}: the circuit {would}{} ({} → {}, {})",
                kind.verb(),
                t.from.as_str(),
                t.to.as_str(),
                t.reason.as_str()
            ),
        }
    }

    fn window(&self) -> WindowKey {
        WindowKey {
            pod: PodKey {
                namespace: self.group.namespace.clone(),
                name: self.pod.clone(),
            },
            mode: self.mode,
            kind: self.kind,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct WindowKey {
    pod: PodKey,
    mode: Mode,
    kind: EventKind,
}

struct Window {
    written: Instant,
    held: Option<TransitionEvent>,
}

/// The Event windows of every replica.
#[derive(Default)]
pub struct EventThrottle {
    windows: HashMap<WindowKey, Window>,
}

impl EventThrottle {
    /// The Event to write now, or `None` when its window is still open: then it is held (in
    /// place of any held before it) until [`due`](Self::due) gives it.
    pub fn offer(&mut self, event: TransitionEvent, now: Instant) -> Option<TransitionEvent> {
        if self.windows.len() >= MAX_WINDOWS {
            self.windows
                .retain(|_, w| w.held.is_some() || now.duration_since(w.written) < EVENT_EVERY);
        }
        let key = event.window();
        if let Some(window) = self.windows.get_mut(&key) {
            if now.duration_since(window.written) < EVENT_EVERY {
                window.held = Some(event);
                return None;
            }
        }
        let window = Window {
            written: now,
            held: None,
        };
        self.windows.insert(key, window);
        Some(event)
    }

    /// The held Events whose window has ended, each opening a new window.
    pub fn due(&mut self, now: Instant) -> Vec<TransitionEvent> {
        self.windows
            .values_mut()
            .filter(|w| w.held.is_some() && now.duration_since(w.written) >= EVENT_EVERY)
            .filter_map(|w| {
                w.written = now;
                w.held.take()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use breaker_api::TransitionReason;

    use super::*;

    fn event(pod: &str, to: State, mode: Mode, seq: u64) -> TransitionEvent {
        let group = ReplicaGroup {
            namespace: "demo".into(),
            config_map: "gw".into(),
        };
        let t = TransitionRecord {
            seq,
            from: State::Closed,
            to,
            reason: TransitionReason::ConsecutiveFailures,
            mode,
            at: "2026-11-28T14:00:00.000Z".into(),
        };
        TransitionEvent::new(&group, pod, &t)
    }

    #[test]
    fn the_note_says_what_happened_and_observe_says_would() {
        let opened = event("v2-0", State::Open, Mode::Auto, 1);
        assert_eq!(opened.kind.reason(), "CircuitOpened");
        assert_eq!(
            opened.note,
            "pod v2-0: the circuit opened (closed → open, consecutive_failures)"
        );
        let observed = event("v2-0", State::Open, Mode::Observe, 1);
        assert!(
            observed.note.contains("would have opened"),
            "{}",
            observed.note
        );
    }

    #[test]
    fn one_event_per_window_and_the_latest_held_is_written_when_it_ends() {
        let t0 = Instant::now();
        let mut throttle = EventThrottle::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert!(throttle
            .offer(event("a", State::Open, Mode::Auto, 1), at(0))
            .is_some());
        assert_eq!(
            throttle.offer(event("a", State::Open, Mode::Auto, 2), at(1)),
            None
        );
        assert_eq!(
            throttle.offer(event("a", State::Open, Mode::Auto, 3), at(2)),
            None
        );
        // Other pods, kinds and modes have windows of their own.
        assert!(throttle
            .offer(event("b", State::Open, Mode::Auto, 1), at(2))
            .is_some());
        assert!(throttle
            .offer(event("a", State::Closed, Mode::Auto, 4), at(2))
            .is_some());
        assert!(throttle
            .offer(event("a", State::Open, Mode::Observe, 5), at(2))
            .is_some());
        assert!(throttle.due(at(29)).is_empty(), "the window is still open");
        let due = throttle.due(at(30));
        assert_eq!(
            due,
            [event("a", State::Open, Mode::Auto, 3)],
            "only the latest"
        );
        assert!(throttle.due(at(31)).is_empty(), "written once");
        // Writing it opened a new window.
        assert_eq!(
            throttle.offer(event("a", State::Open, Mode::Auto, 6), at(59)),
            None
        );
        assert!(throttle
            .offer(event("a", State::Open, Mode::Auto, 7), at(90))
            .is_some());
    }

    #[test]
    fn the_windows_remembered_are_bounded() {
        let t0 = Instant::now();
        let mut throttle = EventThrottle::default();
        for i in 0..MAX_WINDOWS + 10 {
            let at = t0 + EVENT_EVERY * (i as u32 / 1000);
            let _ = throttle.offer(event(&format!("v2-{i}"), State::Open, Mode::Auto, 1), at);
        }
        assert!(
            throttle.windows.len() <= MAX_WINDOWS,
            "{}",
            throttle.windows.len()
        );
    }
}
