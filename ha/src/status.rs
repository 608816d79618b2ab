//! A broker's HA status and the transitions between statuses. The names are an
//! external contract: `tandem-ha status --expect=NAME`, the init scripts and the
//! resource agents match on them.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BrokerStatus {
    /// Not in a cluster (`ha-cluster = no`).
    Standalone,
    /// Started, looking for a primary.
    Joining,
    /// Connected to the primary, downloading configuration and messages.
    CatchUp,
    /// A hot backup: caught up, can be promoted.
    Ready,
    /// Just promoted: serving, but holding settlements for the backups it expects.
    Recovering,
    /// Primary with every expected backup ready (or timed out).
    Active,
}

impl BrokerStatus {
    pub const ALL: [BrokerStatus; 6] = [
        BrokerStatus::Standalone,
        BrokerStatus::Joining,
        BrokerStatus::CatchUp,
        BrokerStatus::Ready,
        BrokerStatus::Recovering,
        BrokerStatus::Active,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BrokerStatus::Standalone => "standalone",
            BrokerStatus::Joining => "joining",
            BrokerStatus::CatchUp => "catchup",
            BrokerStatus::Ready => "ready",
            BrokerStatus::Recovering => "recovering",
            BrokerStatus::Active => "active",
        }
    }

    /// Serves clients (qpidd's `isPrimary`).
    pub fn is_primary(self) -> bool {
        matches!(
            self,
            BrokerStatus::Recovering | BrokerStatus::Active | BrokerStatus::Standalone
        )
    }

    /// A backup of some kind (refuses ordinary clients).
    pub fn is_backup(self) -> bool {
        matches!(
            self,
            BrokerStatus::Joining | BrokerStatus::CatchUp | BrokerStatus::Ready
        )
    }

    /// The transitions the seeds allow; anything else is a bug and fails stop.
    pub fn can_become(self, to: BrokerStatus) -> bool {
        use BrokerStatus::*;
        matches!(
            (self, to),
            (Standalone, Joining)
                | (Joining, CatchUp)
                | (Joining, Recovering)
                | (CatchUp, Ready)
                | (Ready, Recovering)
                | (Ready, CatchUp)
                | (Recovering, Active)
                // A backup still catching up when its primary went away starts
                // over; a ready one stays ready (it is what gets promoted).
                | (CatchUp, Joining)
                // A primary that meets a newer primary steps down (epochs).
                | (Recovering, Joining)
                | (Active, Joining)
        )
    }
}

impl fmt::Display for BrokerStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `--expect` accepts: a status, or `primary` (recovering or active) and
/// `backup` (joining, catchup or ready).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expectation {
    Is(BrokerStatus),
    Primary,
    Backup,
}

impl Expectation {
    pub fn matches(self, s: BrokerStatus) -> bool {
        match self {
            Expectation::Is(x) => x == s,
            Expectation::Primary => matches!(s, BrokerStatus::Recovering | BrokerStatus::Active),
            Expectation::Backup => s.is_backup(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown broker status '{0}': one of standalone, joining, catchup, ready, recovering, active (or primary, backup)")]
pub struct UnknownStatus(pub String);

impl FromStr for BrokerStatus {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        // Printed "catchup", as qpidd does; "catch-up" is read too.
        let lower = if lower == "catch-up" {
            "catchup".to_owned()
        } else {
            lower
        };
        BrokerStatus::ALL
            .into_iter()
            .find(|st| st.as_str() == lower)
            .ok_or_else(|| UnknownStatus(s.to_owned()))
    }
}

impl FromStr for Expectation {
    type Err = UnknownStatus;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "primary" => Ok(Expectation::Primary),
            "backup" => Ok(Expectation::Backup),
            _ => s.parse().map(Expectation::Is),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_catch_up_is_an_alias() {
        for s in BrokerStatus::ALL {
            assert_eq!(s.as_str().parse::<BrokerStatus>(), Ok(s));
        }
        assert_eq!(
            BrokerStatus::CatchUp.as_str(),
            "catchup",
            "as qpidd prints it"
        );
        assert_eq!(
            "catch-up".parse::<BrokerStatus>(),
            Ok(BrokerStatus::CatchUp)
        );
        assert!("primaryish".parse::<BrokerStatus>().is_err());
    }

    #[test]
    fn expect_primary_matches_recovering_and_active_only() {
        let e: Expectation = "primary".parse().expect("parses");
        assert!(e.matches(BrokerStatus::Recovering));
        assert!(e.matches(BrokerStatus::Active));
        assert!(!e.matches(BrokerStatus::Ready));
        assert!(!e.matches(BrokerStatus::Standalone));
    }

    #[test]
    fn only_the_seeds_transitions_are_legal() {
        use BrokerStatus::*;
        assert!(Joining.can_become(CatchUp));
        assert!(Ready.can_become(Recovering));
        assert!(
            !CatchUp.can_become(Recovering),
            "a catching-up backup cannot be promoted"
        );
        assert!(!Joining.can_become(Active));
        assert!(!Active.can_become(Ready));
    }
}
