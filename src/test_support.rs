//! Helpers shared by the library's unit tests.

/// Panics unless `text` mentions every one of `needles`, showing `text`.
#[track_caller]
pub fn assert_mentions(text: &str, needles: &[&str]) {
    for n in needles {
        assert!(text.contains(n), "{n:?} is not in: {text}");
    }
}
