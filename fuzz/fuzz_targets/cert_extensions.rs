//! The certificate's permission extensions (DER), and certificates as a whole: any
//! bytes decode to a value or an error. (A client certificate is verified against the
//! region's CA before these run; this guards against a CA's own mistakes.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_ca::ext::{self, Ext};

fuzz_target!(|data: &[u8]| {
    let _ = ext::decode_kind(data);
    let _ = ext::decode_node(data);
    let _ = ext::decode_permissions(data);
    for e in [Ext::Regions, Ext::Repos] {
        let _ = ext::decode_strings(e, data);
    }
    let _ = repospanner_ca::CertFacts::from_der(data);
});
