//! Tandem HA: arrives with the HA issue (roles, membership, replication).
