//! Calls `lua/settle_sold_out.lua`: an event's EVENT_SOLD_OUT was acknowledged.

use redis::aio::ConnectionLike;

use super::{Script, ScriptError};
use crate::model::keys::Keys;

/// The script of `lua/settle_sold_out.lua`.
pub fn script() -> Script {
    Script::new(
        "settle_sold_out",
        include_str!("../../../lua/settle_sold_out.lua"),
    )
}

/// Mark the sell-out of `event` recorded at `at_ms` as announced; whether it was
/// still the pending one.
pub async fn settle<C: ConnectionLike + Send>(
    script: &Script,
    conn: &mut C,
    keys: &Keys,
    event: &str,
    at_ms: u64,
) -> Result<bool, ScriptError> {
    let key = keys.sold_out(event);
    let at = at_ms.to_string();
    let r: i64 = script.invoke(conn, &[key.as_str()], &[at.as_str()]).await?;
    Ok(r == 1)
}
