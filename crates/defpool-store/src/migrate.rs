//! Migrations, embedded per backend and applied in order inside one transaction. Each applied
//! version is recorded in `schema_migrations` with a checksum of its text, so an edited
//! migration is noticed rather than silently skipped.

use sha2::{Digest, Sha256};

use crate::error::StoreError;

/// One embedded migration.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub(crate) fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/sqlite/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "worker facts on work rows",
        sql: include_str!("../migrations/sqlite/0002_worker_facts_on_work_rows.sql"),
    },
    Migration {
        version: 3,
        name: "work keyed by time",
        sql: include_str!("../migrations/sqlite/0003_work_keyed_by_time.sql"),
    },
    Migration {
        version: 4,
        name: "room for updates",
        sql: include_str!("../migrations/sqlite/0004_room_for_updates.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        sql: include_str!("../migrations/postgres/0001_initial.sql"),
    },
    Migration {
        version: 2,
        name: "worker facts on work rows",
        sql: include_str!("../migrations/postgres/0002_worker_facts_on_work_rows.sql"),
    },
    Migration {
        version: 3,
        name: "work keyed by time",
        sql: include_str!("../migrations/postgres/0003_work_keyed_by_time.sql"),
    },
    Migration {
        version: 4,
        name: "room for updates",
        sql: include_str!("../migrations/postgres/0004_room_for_updates.sql"),
    },
];

/// The migrations still to apply, given the `(version, checksum)` rows already recorded.
pub(crate) fn pending(
    known: &'static [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<Migration>, StoreError> {
    let latest = known.last().map_or(0, |m| m.version);
    if let Some(&(found, _)) = applied.iter().max_by_key(|(v, _)| *v) {
        if found > latest {
            return Err(StoreError::SchemaTooNew {
                found,
                known: latest,
            });
        }
    }
    let mut out = Vec::new();
    for m in known {
        match applied.iter().find(|(v, _)| *v == m.version) {
            Some((_, sum)) if *sum == m.checksum() => {}
            Some(_) => {
                return Err(StoreError::MigrationChanged {
                    version: m.version,
                    name: m.name,
                })
            }
            None => out.push(*m),
        }
    }
    Ok(out)
}

pub(crate) fn latest(known: &'static [Migration]) -> i64 {
    known.last().map_or(0, |m| m.version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_ascend() {
        for list in [SQLITE, POSTGRES] {
            assert!(list.windows(2).all(|w| w[0].version < w[1].version));
            assert_eq!(list[0].version, 1);
        }
        assert_eq!(latest(SQLITE), latest(POSTGRES));
    }

    #[test]
    fn pending_checks() {
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        let all: Vec<_> = SQLITE.iter().map(|m| (m.version, m.checksum())).collect();
        assert!(pending(SQLITE, &all).unwrap().is_empty());
        assert!(matches!(
            pending(SQLITE, &[(1, "x".into())]),
            Err(StoreError::MigrationChanged { version: 1, .. })
        ));
        assert!(matches!(
            pending(SQLITE, &[(999, "x".into())]),
            Err(StoreError::SchemaTooNew { found: 999, .. })
        ));
    }
}
