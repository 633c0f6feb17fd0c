//! pkt-line decoding and the side-band writer: any bytes, never a panic; what decodes
//! re-encodes to the same bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use repospanner_net::git::pktline::{self, Decoded, Pkt, Reader};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let mut again = Vec::new();
    while let Ok(Some(p)) = r.next_pkt() {
        match p {
            Pkt::Flush => pktline::flush(&mut again),
            Pkt::Delim => pktline::delim(&mut again),
            Pkt::ResponseEnd => again.extend_from_slice(b"0002"),
            Pkt::Data(d) => pktline::data(&mut again, d).expect("a decoded packet fits"),
        }
    }
    let read = data.len() - r.rest().len();
    assert_eq!(again.len(), read);
    if let Ok(Decoded::Pkt(_, n)) = pktline::decode(data) {
        assert!(n <= data.len());
    }
    let mut band = Vec::new();
    pktline::sideband(&mut band, 2, data, 1000);
    let mut out = Vec::new();
    pktline::error(&mut out, &String::from_utf8_lossy(data));
    assert!(out.len() <= pktline::MAX_PKT);
});
