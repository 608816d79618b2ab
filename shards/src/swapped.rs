//! A value read by many threads and replaced whole now and then: what the
//! broker reads again without a restart (the ACL, the users file, the TLS
//! certificate). Readers take the current `Arc` and keep it as long as they
//! like; a replacement is seen by the next reader. A writer that panicked
//! leaves the lock poisoned, which changes nothing here: the value inside is
//! always a whole one.

use std::sync::{Arc, RwLock};

#[derive(Debug, Default)]
pub struct Swapped<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swapped<T> {
    pub fn new(value: T) -> Swapped<T> {
        Swapped::from_arc(Arc::new(value))
    }

    pub fn from_arc(value: Arc<T>) -> Swapped<T> {
        Swapped {
            current: RwLock::new(value),
        }
    }

    /// The value now.
    pub fn get(&self) -> Arc<T> {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces it; readers holding the old one keep it.
    pub fn set(&self, value: T) {
        self.set_arc(Arc::new(value));
    }

    pub fn set_arc(&self, value: Arc<T>) {
        match self.current.write() {
            Ok(mut current) => *current = value,
            Err(poisoned) => *poisoned.into_inner() = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_keeps_what_it_took_and_the_next_one_sees_the_replacement() {
        let s = Swapped::new(1);
        let taken = s.get();
        s.set(2);
        assert_eq!((*taken, *s.get()), (1, 2));
    }
}
