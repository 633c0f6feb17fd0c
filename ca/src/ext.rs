//! The repoSpanner certificate extensions: their OIDs and their DER encoding.
//!
//! Every fact a certificate carries for repoSpanner lives in **one** non-critical
//! extension per kind of fact, each a small DER structure (the Go original used one
//! extension per value, so a certificate with two repository globs carried the same
//! extension OID twice, which current TLS stacks reject as a duplicate extension).
//!
//! Arc: `1.3.6.1.4.1.37476.9000.56.2` (the Go original's arc is `...56.1`; a new
//! sub-arc keeps the two encodings from ever being confused).
//!
//! | OID suffix | name        | value (DER)                                              | on        |
//! |------------|-------------|----------------------------------------------------------|-----------|
//! | `.1`       | kind        | `ENUMERATED { ca(0), node(1), user(2) }`                  | all       |
//! | `.2`       | cluster     | `UTF8String`                                             | all       |
//! | `.3`       | node        | `SEQUENCE { region UTF8String, name UTF8String, id INTEGER }` | node |
//! | `.4`       | permissions | `SEQUENCE OF ENUMERATED { admin(0), monitor(1), read(2), write(3) }` | user |
//! | `.5`       | regions     | `SEQUENCE OF UTF8String` (shell globs)                   | user      |
//! | `.6`       | repos       | `SEQUENCE OF UTF8String` (shell globs)                   | user      |
//!
//! Everything here is pure: bytes in, values out.

use crate::{Error, Permission};

/// The arc under which every repoSpanner extension lives.
pub const ARC: [u64; 10] = [1, 3, 6, 1, 4, 1, 37476, 9000, 56, 2];

/// Which extension (the last OID component under [`ARC`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    Kind = 1,
    Cluster = 2,
    Node = 3,
    Permissions = 4,
    Regions = 5,
    Repos = 6,
}

impl Ext {
    pub const ALL: [Ext; 6] = [
        Ext::Kind,
        Ext::Cluster,
        Ext::Node,
        Ext::Permissions,
        Ext::Regions,
        Ext::Repos,
    ];

    /// The full OID as components.
    pub fn oid(self) -> Vec<u64> {
        let mut oid = ARC.to_vec();
        oid.push(self as u64);
        oid
    }

    /// The full OID in dotted form, e.g. `1.3.6.1.4.1.37476.9000.56.2.1`.
    pub fn dotted(self) -> String {
        self.oid()
            .iter()
            .map(u64::to_string)
            .collect::<Vec<_>>()
            .join(".")
    }

    pub fn name(self) -> &'static str {
        match self {
            Ext::Kind => "kind",
            Ext::Cluster => "cluster",
            Ext::Node => "node",
            Ext::Permissions => "permissions",
            Ext::Regions => "regions",
            Ext::Repos => "repos",
        }
    }

    pub fn from_dotted(dotted: &str) -> Option<Ext> {
        Ext::ALL.into_iter().find(|e| e.dotted() == dotted)
    }
}

/// What kind of certificate this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertKind {
    Ca,
    Node,
    User,
}

impl CertKind {
    fn code(self) -> i64 {
        match self {
            CertKind::Ca => 0,
            CertKind::Node => 1,
            CertKind::User => 2,
        }
    }
    fn from_code(code: i64) -> Option<Self> {
        match code {
            0 => Some(CertKind::Ca),
            1 => Some(CertKind::Node),
            2 => Some(CertKind::User),
            _ => None,
        }
    }
}

impl std::fmt::Display for CertKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CertKind::Ca => "CA",
            CertKind::Node => "node",
            CertKind::User => "user",
        })
    }
}

/// The node identity carried by a node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeExt {
    pub region: String,
    pub name: String,
    pub id: u64,
}

fn bad(ext: Ext, err: yasna::ASN1Error) -> Error {
    Error::BadExtension {
        ext: ext.name(),
        reason: format!("{err}"),
    }
}

pub fn encode_kind(kind: CertKind) -> Vec<u8> {
    yasna::construct_der(|w| w.write_enum(kind.code()))
}

pub fn decode_kind(der: &[u8]) -> Result<CertKind, Error> {
    let code = yasna::parse_der(der, |r| r.read_enum()).map_err(|e| bad(Ext::Kind, e))?;
    CertKind::from_code(code).ok_or(Error::BadExtension {
        ext: Ext::Kind.name(),
        reason: format!("unknown certificate kind {code}"),
    })
}

pub fn encode_string(value: &str) -> Vec<u8> {
    yasna::construct_der(|w| w.write_utf8_string(value))
}

pub fn decode_string(ext: Ext, der: &[u8]) -> Result<String, Error> {
    yasna::parse_der(der, |r| r.read_utf8string()).map_err(|e| bad(ext, e))
}

pub fn encode_node(node: &NodeExt) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence(|s| {
            s.next().write_utf8_string(&node.region);
            s.next().write_utf8_string(&node.name);
            s.next().write_u64(node.id);
        })
    })
}

pub fn decode_node(der: &[u8]) -> Result<NodeExt, Error> {
    yasna::parse_der(der, |r| {
        r.read_sequence(|s| {
            let region = s.next().read_utf8string()?;
            let name = s.next().read_utf8string()?;
            let id = s.next().read_u64()?;
            Ok(NodeExt { region, name, id })
        })
    })
    .map_err(|e| bad(Ext::Node, e))
}

pub fn encode_strings(values: &[String]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence_of(|s| {
            for v in values {
                s.next().write_utf8_string(v);
            }
        })
    })
}

pub fn decode_strings(ext: Ext, der: &[u8]) -> Result<Vec<String>, Error> {
    yasna::parse_der(der, |r| r.collect_sequence_of(|e| e.read_utf8string()))
        .map_err(|e| bad(ext, e))
}

pub fn encode_permissions(perms: &[Permission]) -> Vec<u8> {
    yasna::construct_der(|w| {
        w.write_sequence_of(|s| {
            for p in perms {
                s.next().write_enum(p.code());
            }
        })
    })
}

pub fn decode_permissions(der: &[u8]) -> Result<Vec<Permission>, Error> {
    let codes = yasna::parse_der(der, |r| r.collect_sequence_of(|e| e.read_enum()))
        .map_err(|e| bad(Ext::Permissions, e))?;
    codes
        .into_iter()
        .map(|c| {
            Permission::from_code(c).ok_or(Error::BadExtension {
                ext: Ext::Permissions.name(),
                reason: format!("unknown permission code {c}"),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oids_are_distinct_and_round_trip() {
        for e in Ext::ALL {
            assert_eq!(Ext::from_dotted(&e.dotted()), Some(e));
        }
        assert_eq!(Ext::Kind.dotted(), "1.3.6.1.4.1.37476.9000.56.2.1");
    }

    #[test]
    fn kind_round_trips() {
        for k in [CertKind::Ca, CertKind::Node, CertKind::User] {
            assert_eq!(decode_kind(&encode_kind(k)).expect("decodes"), k);
        }
        // ENUMERATED 7 is no kind we know.
        assert!(decode_kind(&[0x0a, 0x01, 0x07]).is_err());
    }

    #[test]
    fn node_round_trips() {
        let n = NodeExt {
            region: "regiona".into(),
            name: "nodea".into(),
            id: u64::MAX,
        };
        assert_eq!(decode_node(&encode_node(&n)).expect("decodes"), n);
    }

    #[test]
    fn strings_round_trip_including_empty_and_unicode() {
        for v in [
            vec![],
            vec!["*".to_string()],
            vec!["rpms/*".into(), "ünï/cødé".into()],
        ] {
            assert_eq!(
                decode_strings(Ext::Repos, &encode_strings(&v)).expect("decodes"),
                v
            );
        }
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        for der in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x0c],
            &[0xff; 8],
            &[0x0c, 0x01, 0xff],
        ] {
            assert!(decode_node(der).is_err());
            assert!(decode_strings(Ext::Regions, der).is_err());
            assert!(decode_permissions(der).is_err());
            assert!(decode_kind(der).is_err());
        }
    }
}
