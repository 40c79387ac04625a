use std::collections::VecDeque;

/// Count-based sliding window over the last `capacity` recorded calls.
#[derive(Debug, Clone)]
pub(crate) struct Window {
    calls: VecDeque<Call>,
    capacity: usize,
    failures: u32,
    slow: u32,
}

#[derive(Debug, Clone, Copy)]
struct Call {
    failed: bool,
    slow: bool,
}

impl Window {
    pub(crate) fn new(capacity: u32) -> Self {
        let capacity = capacity.max(1) as usize;
        Self {
            calls: VecDeque::with_capacity(capacity),
            capacity,
            failures: 0,
            slow: 0,
        }
    }

    pub(crate) fn push(&mut self, failed: bool, slow: bool) {
        if self.calls.len() == self.capacity {
            self.pop_oldest();
        }
        self.calls.push_back(Call { failed, slow });
        self.failures += u32::from(failed);
        self.slow += u32::from(slow);
    }

    fn pop_oldest(&mut self) {
        if let Some(old) = self.calls.pop_front() {
            self.failures -= u32::from(old.failed);
            self.slow -= u32::from(old.slow);
        }
    }

    /// Changes the capacity, keeping the most recent calls that still fit.
    pub(crate) fn resize(&mut self, capacity: u32) {
        self.capacity = capacity.max(1) as usize;
        while self.calls.len() > self.capacity {
            self.pop_oldest();
        }
    }

    pub(crate) fn clear(&mut self) {
        self.calls.clear();
        self.failures = 0;
        self.slow = 0;
    }

    pub(crate) fn len(&self) -> u32 {
        self.calls.len() as u32
    }

    pub(crate) fn failures(&self) -> u32 {
        self.failures
    }

    pub(crate) fn slow(&self) -> u32 {
        self.slow
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_oldest_and_keeps_counts() {
        let mut w = Window::new(3);
        w.push(true, false);
        w.push(false, true);
        w.push(true, true);
        assert_eq!((w.len(), w.failures(), w.slow()), (3, 2, 2));
        w.push(false, false);
        assert_eq!((w.len(), w.failures(), w.slow()), (3, 1, 2));
        w.resize(1);
        assert_eq!((w.len(), w.failures(), w.slow()), (1, 0, 0));
    }
}
