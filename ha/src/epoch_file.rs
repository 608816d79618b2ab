//! What a broker last knew of its cluster, kept in `data-dir/ha-epoch` so
//! that after a restart (or a total cluster failure) the broker's store says
//! which history it belongs to: the epoch, and the cluster's id (the broker
//! id of the cluster's first primary, adopted by every broker that joins it).
//! A small text file, replaced whole:
//!
//! ```text
//! format = 1
//! epoch = 7
//! cluster = 0f6c...-...
//! ```

use bytes::Bytes;

const FORMAT: u64 = 1;

/// What the file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    pub epoch: u64,
    /// `None` until the broker was promoted or joined a primary.
    pub cluster: Option<String>,
}

/// The file holding `known`.
pub fn encode(known: &Known) -> Bytes {
    let mut text = format!("format = {FORMAT}\nepoch = {}\n", known.epoch);
    if let Some(cluster) = &known.cluster {
        text.push_str(&format!("cluster = {cluster}\n"));
    }
    Bytes::from(text)
}

/// Whether `id` can be a cluster id (it travels in link properties and in
/// this file: printable, no spaces).
pub fn valid_cluster_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.chars().all(|c| c.is_ascii_graphic())
}

/// What a file holds, or what is wrong with it.
pub fn decode(text: &str) -> Result<Known, String> {
    let value = |key: &str| {
        text.lines()
            .filter_map(|l| l.split_once('='))
            .find(|(k, _)| k.trim() == key)
            .map(|(_, v)| v.trim())
    };
    match value("format").map(str::parse::<u64>) {
        Some(Ok(FORMAT)) => {}
        Some(Ok(other)) => {
            return Err(format!(
                "format {other}, this build reads format {FORMAT} only"
            ))
        }
        _ => return Err(format!("no 'format = {FORMAT}' line")),
    }
    let epoch = match value("epoch").map(str::parse::<u64>) {
        Some(Ok(epoch)) => epoch,
        _ => return Err("no 'epoch = N' line".into()),
    };
    let cluster = match value("cluster") {
        None => None,
        Some(id) if valid_cluster_id(id) => Some(id.to_owned()),
        Some(id) => return Err(format!("'cluster = {id}' is not a cluster id")),
    };
    Ok(Known { epoch, cluster })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_known_round_trips_and_a_bad_file_says_why() {
        for known in [
            Known {
                epoch: 42,
                cluster: None,
            },
            Known {
                epoch: 3,
                cluster: Some("6f1c2d9e-0000-4000-8000-000000000001".into()),
            },
        ] {
            let text = encode(&known);
            assert_eq!(decode(std::str::from_utf8(&text).expect("text")), Ok(known));
        }
        assert!(decode("format = 2\nepoch = 1\n")
            .expect_err("newer")
            .contains("format 2"));
        assert!(decode("epoch = 1\n")
            .expect_err("no format")
            .contains("format"));
        assert!(decode("format = 1\nepoch = x\n").is_err());
        assert!(decode("format = 1\nepoch = 1\ncluster = a b\n")
            .expect_err("spaces")
            .contains("not a cluster id"));
    }
}
