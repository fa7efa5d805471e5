//! The parts of an `xl save` image: the guest's RAM (the page contents of
//! libxc's PAGE_DATA records) and everything else (xl's header and the
//! guest's configuration, libxl's records with QEMU's device state and
//! its xenstore keys, libxc's records with Xen's HVM context and
//! parameters, the frame lists). Formats: xl's `save_file_header`
//! (tools/xl), docs/specs/libxl-migration-stream.pandoc and
//! libxc-migration-stream.pandoc in Xen's tree.

use std::ops::Range;

const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
const LIBXL_IDENT: &[u8; 8] = b"LibxlFmt";
const LIBXC_MARKER: u64 = u64::MAX;
const LIBXC_ID: &[u8; 4] = b"XENF";
/// libxl's record types.
const LIBXL_END: u32 = 0;
const LIBXL_LIBXC_CONTEXT: u32 = 1;
/// libxc's record types.
const LIBXC_END: u32 = 0;
const LIBXC_PAGE_DATA: u32 = 1;

/// Byte ranges of an image: `ram` holds page contents, `rest` all else.
#[derive(Debug, Default, PartialEq)]
pub struct Parts {
    pub ram: Vec<Range<usize>>,
    pub rest: Vec<Range<usize>>,
    pub pages: usize,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<Range<usize>, String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.data.len());
        let end = end.ok_or_else(|| format!("the image ends inside {what} at byte {}", self.at))?;
        let r = self.at..end;
        self.at = end;
        Ok(r)
    }
    fn u32_le(&self, r: &Range<usize>, off: usize) -> u32 {
        u32::from_le_bytes(
            self.data[r.start + off..r.start + off + 4]
                .try_into()
                .unwrap(),
        )
    }
}

/// Splits `data`, an `xl save` image of an x86 guest (little-endian
/// streams), into RAM and the rest; anything it does not recognise is an
/// error rather than a guess.
pub fn parts(data: &[u8]) -> Result<Parts, String> {
    let mut r = Reader { data, at: 0 };
    let mut p = Parts::default();
    let head = r.take(48, "xl's header")?;
    if &data[..32] != XL_MAGIC {
        return Err("no xl save header".into());
    }
    let optional = r.u32_le(&head, 44) as usize;
    p.rest
        .push(head.start..r.take(optional, "xl's optional data")?.end);
    let libxl = r.take(16, "libxl's header")?;
    if &data[libxl.start..libxl.start + 8] != LIBXL_IDENT || data[libxl.end - 1] & 1 != 0 {
        return Err("no little-endian libxl stream after xl's header".into());
    }
    p.rest.push(libxl);
    loop {
        let (kind, rec) = record(&mut r, "a libxl record")?;
        p.rest.push(rec);
        match kind {
            LIBXL_END => break,
            LIBXL_LIBXC_CONTEXT => libxc(&mut r, &mut p)?,
            _ => {}
        }
    }
    // Nothing follows in what xl writes; were there more, it is searched.
    if r.at != data.len() {
        p.rest.push(r.at..data.len());
    }
    Ok(p)
}

/// One record (type, body length, body padded to 8 bytes): its type and
/// its whole extent.
fn record(r: &mut Reader, what: &str) -> Result<(u32, Range<usize>), String> {
    let head = r.take(8, what)?;
    let kind = r.u32_le(&head, 0);
    let len = r.u32_le(&head, 4) as usize;
    let body = r.take(len.div_ceil(8) * 8, what)?;
    Ok((kind, head.start..body.end))
}

/// libxc's stream, embedded after libxl's LIBXC_CONTEXT record, up to and
/// with its END record.
fn libxc(r: &mut Reader, p: &mut Parts) -> Result<(), String> {
    let head = r.take(24 + 16, "libxc's headers")?;
    let d = r.data;
    if u64::from_be_bytes(d[head.start..head.start + 8].try_into().unwrap()) != LIBXC_MARKER
        || &d[head.start + 8..head.start + 12] != LIBXC_ID
        || d[head.start + 17] & 1 != 0
    {
        return Err("no little-endian libxc stream after LIBXC_CONTEXT".into());
    }
    p.rest.push(head);
    loop {
        let (kind, rec) = record(r, "a libxc record")?;
        match kind {
            LIBXC_END => {
                p.rest.push(rec);
                return Ok(());
            }
            LIBXC_PAGE_DATA => {
                let count = u32::from_le_bytes(d[rec.start + 8..rec.start + 12].try_into().unwrap())
                    as usize;
                let frames_end = rec.start + 16 + 8 * count;
                if frames_end > rec.end {
                    return Err(format!(
                        "a PAGE_DATA record at byte {} lists more frames than it holds",
                        rec.start
                    ));
                }
                p.pages += (rec.end - frames_end) / 4096;
                p.rest.push(rec.start..frames_end);
                p.ram.push(frames_end..rec.end);
            }
            _ => p.rest.push(rec),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u32, body: &[u8]) -> Vec<u8> {
        let mut v = kind.to_le_bytes().to_vec();
        v.extend((body.len() as u32).to_le_bytes());
        v.extend(body);
        v.resize(v.len().div_ceil(8) * 8, 0);
        v
    }

    /// An image with a configuration, QEMU's state (`qemu`) and one
    /// PAGE_DATA record of two frames holding `page`.
    fn image(qemu: &[u8], page: &[u8]) -> (Vec<u8>, Range<usize>) {
        let mut v = XL_MAGIC.to_vec();
        let config = b"name = \"hvm1\"";
        for x in [0x0102_0304u32, 0, 0, config.len() as u32] {
            v.extend(x.to_le_bytes());
        }
        v.extend(config);
        v.extend(LIBXL_IDENT);
        v.extend(2u32.to_be_bytes());
        v.extend(0u32.to_be_bytes());
        v.extend(rec(LIBXL_LIBXC_CONTEXT, &[]));
        v.extend(u64::MAX.to_be_bytes());
        v.extend(LIBXC_ID);
        v.extend(3u32.to_be_bytes());
        v.extend([0u8; 8]);
        v.extend([2, 0, 0, 0, 12, 0, 0, 0, 4, 0, 0, 0, 17, 0, 0, 0]);
        v.extend(rec(9, b"hvm context"));
        let mut pages = 2u32.to_le_bytes().to_vec();
        pages.extend([0u8; 4]);
        pages.extend(0x10u64.to_le_bytes());
        pages.extend(0x11u64.to_le_bytes());
        let ram_start = v.len() + 8 + pages.len();
        let mut frames = vec![0u8; 8192];
        frames[4000..4000 + page.len()].copy_from_slice(page);
        pages.extend(&frames);
        v.extend(rec(LIBXC_PAGE_DATA, &pages));
        v.extend(rec(LIBXC_END, &[]));
        v.extend(rec(3, qemu));
        v.extend(rec(LIBXL_END, &[]));
        (v, ram_start..ram_start + 8192)
    }

    #[test]
    fn ram_is_the_page_contents_and_the_rest_is_everything_else() {
        let (img, ram) = image(b"qemu state", b"typed");
        let p = parts(&img).unwrap();
        assert_eq!(p.ram, vec![ram.clone()]);
        assert_eq!(p.pages, 2);
        // Every byte is in exactly one part.
        let mut all: Vec<Range<usize>> = p.ram.iter().chain(&p.rest).cloned().collect();
        all.sort_by_key(|r| r.start);
        assert_eq!(all.first().unwrap().start, 0);
        assert_eq!(all.last().unwrap().end, img.len());
        assert!(all.windows(2).all(|w| w[0].end == w[1].start));
        // QEMU's state lies in the rest.
        let qemu = img.windows(10).position(|w| w == b"qemu state").unwrap();
        assert!(p.rest.iter().any(|r| r.contains(&qemu)));
    }

    #[test]
    fn what_it_does_not_recognise_is_an_error() {
        let (img, _) = image(b"q", b"p");
        assert!(parts(&img[..img.len() - 8]).is_err(), "no END");
        assert!(parts(&img[1..]).is_err(), "no magic");
        let mut extra = img.clone();
        extra.extend(b"trailing");
        assert_eq!(
            parts(&extra).unwrap().rest.last(),
            Some(&(img.len()..extra.len()))
        );
        let mut big_endian = img.clone();
        big_endian[48 + 13 + 15] = 1;
        assert!(parts(&big_endian).is_err(), "a big-endian libxl stream");
    }
}
