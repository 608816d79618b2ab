//! The epoch a broker last knew, kept in `data-dir/ha-epoch` so that after a
//! restart (or a total cluster failure) the broker's store says which history
//! it belongs to. A small text file, replaced whole:
//!
//! ```text
//! format = 1
//! epoch = 7
//! ```

use bytes::Bytes;

const FORMAT: u64 = 1;

/// The file holding `epoch`.
pub fn encode(epoch: u64) -> Bytes {
    Bytes::from(format!("format = {FORMAT}\nepoch = {epoch}\n"))
}

/// The epoch a file holds, or what is wrong with it.
pub fn decode(text: &str) -> Result<u64, String> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim().parse::<u64>())
    };
    match value("format") {
        Some(Ok(FORMAT)) => {}
        Some(Ok(other)) => {
            return Err(format!(
                "format {other}, this build reads format {FORMAT} only"
            ))
        }
        _ => return Err(format!("no 'format = {FORMAT}' line")),
    }
    match value("epoch") {
        Some(Ok(epoch)) => Ok(epoch),
        _ => Err("no 'epoch = N' line".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_round_trips_and_a_bad_file_says_why() {
        let text = encode(42);
        assert_eq!(decode(std::str::from_utf8(&text).expect("text")), Ok(42));
        assert!(decode("format = 2\nepoch = 1\n")
            .expect_err("newer")
            .contains("format 2"));
        assert!(decode("epoch = 1\n")
            .expect_err("no format")
            .contains("format"));
        assert!(decode("format = 1\nepoch = x\n").is_err());
    }
}
