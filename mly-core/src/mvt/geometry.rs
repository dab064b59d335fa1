//! MVT geometry command streams (MoveTo, LineTo, ClosePath with zigzag-encoded deltas), checked
//! for every count and length so that hostile input is an error, never a panic.

pub(super) const CMD_MOVE_TO: u32 = 1;
pub(super) const CMD_LINE_TO: u32 = 2;
pub(super) const CMD_CLOSE_PATH: u32 = 7;

pub(super) fn zigzag(v: u32) -> i64 {
    i64::from((v >> 1) as i32 ^ -((v & 1) as i32))
}

/// One MoveTo-started run of vertices (line part or ring), in tile pixels.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Part {
    pub(super) points: Vec<(i64, i64)>,
    pub(super) closed: bool,
}

/// Walks a command stream, checking every count against the remaining input before touching it.
pub(super) fn walk(geom: &[u32], mut on: impl FnMut(u32, (i64, i64))) -> Result<(), &'static str> {
    let (mut x, mut y) = (0i64, 0i64);
    let mut i = 0usize;
    let mut started = false;
    while let Some(&cmd) = geom.get(i) {
        i += 1;
        let (id, count) = (cmd & 0x7, (cmd >> 3) as usize);
        match id {
            CMD_MOVE_TO | CMD_LINE_TO => {
                if id == CMD_LINE_TO && !started {
                    return Err("LineTo before any MoveTo");
                }
                if count == 0 {
                    return Err("MoveTo/LineTo with count 0");
                }
                let params = geom.get(i..).unwrap_or(&[]);
                if count > params.len() / 2 {
                    return Err("command count exceeds the remaining parameters");
                }
                for pair in params[..count * 2].chunks_exact(2) {
                    // checked: thousands of extreme deltas could otherwise overflow i64.
                    x = x.checked_add(zigzag(pair[0])).ok_or("coordinate overflow")?;
                    y = y.checked_add(zigzag(pair[1])).ok_or("coordinate overflow")?;
                    on(id, (x, y));
                }
                i += count * 2;
                started = true;
            }
            CMD_CLOSE_PATH => {
                if !started {
                    return Err("ClosePath before any MoveTo");
                }
                if count != 1 {
                    return Err("ClosePath with count other than 1");
                }
                on(id, (x, y));
            }
            _ => return Err("unknown command id"),
        }
    }
    Ok(())
}

/// The first MoveTo point, after validating the whole stream; `None` for an empty geometry.
pub(super) fn first_point(geom: &[u32]) -> Result<Option<(i64, i64)>, &'static str> {
    let mut first = None;
    walk(geom, |id, p| {
        if id == CMD_MOVE_TO && first.is_none() {
            first = Some(p);
        }
    })?;
    Ok(first)
}

/// Splits a line or polygon stream into parts at each MoveTo.
pub(super) fn parse_parts(geom: &[u32]) -> Result<Vec<Part>, &'static str> {
    let mut parts: Vec<Part> = Vec::new();
    walk(geom, |id, p| match id {
        CMD_MOVE_TO => parts.push(Part { points: vec![p], closed: false }),
        CMD_LINE_TO => {
            if let Some(part) = parts.last_mut() {
                part.points.push(p);
            }
        }
        _ => {
            if let Some(part) = parts.last_mut() {
                part.closed = true;
            }
        }
    })?;
    Ok(parts)
}
