//! Following a file transfer from the command line: the running client
//! does the work; this asks it how far the transfer got, a few times a
//! second, and draws a progress bar (rate, time left) on stderr, or prints
//! progress lines with `--json`, until the transfer is settled.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::anyhow;
use indicatif::{ProgressBar, ProgressStyle};
use messenger::api::{Request, Response, TransferView};
use messenger::control;
use messenger::proto::chat::MessageId;
use messenger::size::human_size;
use messenger::store::{Direction, TransferState};
use serde_json::json;

use crate::output::Output;
use crate::{Failure, exit};

/// How often the running client is asked.
const POLL: Duration = Duration::from_millis(100);

/// Follows transfer `id` of the running client of `home` until it is
/// completed (Ok), declined or failed (an error), or the client stops.
pub(crate) async fn follow(home: &Path, id: MessageId, out: &Output) -> Result<(), Failure> {
    let bar = ProgressBar::new(0);
    let mut style_set = false;
    let started = Instant::now();
    let mut last: Option<(TransferState, u64)> = None;
    let mut first_received: Option<(Instant, u64)> = None;
    let mut interval = tokio::time::interval(POLL);
    loop {
        interval.tick().await;
        let view = match control::call(home, &Request::Files).await {
            Ok(Some(Response::Transfers { transfers })) => {
                transfers.into_iter().find(|t| t.transfer.id == id)
            }
            Ok(Some(Response::Failed(f))) => return Err(Failure::of(f)),
            Ok(_) => {
                bar.abandon();
                return Err(anyhow!(
                    "the running client stopped; the transfer goes on when it runs again (`messenger files` shows it)"
                )
                .into());
            }
            Err(e) => return Err(anyhow!(e).into()),
        };
        let Some(TransferView { transfer, received }) = view else {
            return Err(Failure::new(
                exit::INVALID,
                anyhow!("no transfer has the id {id}"),
            ));
        };
        let size = transfer.offer.size;
        if !style_set {
            bar.set_length(size);
            let template = match transfer.direction {
                Direction::In => {
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} {eta} left"
                }
                Direction::Out => "{spinner} {msg} ({total_bytes})",
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(200));
            style_set = true;
        }
        first_received.get_or_insert((Instant::now(), received));
        bar.set_position(received);
        let peer = &transfer.peer;
        let name = crate::printable::inline(&transfer.offer.name);
        bar.set_message(match (transfer.direction, transfer.state) {
            (Direction::Out, TransferState::Offered) => {
                format!("{name}: offered; waiting for {peer} to accept and fetch it")
            }
            (Direction::In, _) => format!("{name} from {peer}"),
            (_, state) => format!("{name}: {state}"),
        });
        if out.is_json() && last != Some((transfer.state, received)) {
            out.emit(
                "",
                json!({"event": "progress", "id": id.to_string(), "state": transfer.state,
                       "received": received, "size": size}),
            );
        }
        last = Some((transfer.state, received));
        match transfer.state {
            TransferState::Completed => {
                bar.finish_and_clear();
                // The rate of what came while we watched (a resumed
                // transfer's earlier part came before).
                let (since, from) = first_received.unwrap_or((started, 0));
                let secs = since.elapsed().as_secs_f64().max(0.001);
                let rate = size.saturating_sub(from) as f64 / secs;
                let saved = transfer
                    .path
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let human = match transfer.direction {
                    Direction::In => format!(
                        "received {name} ({}) from {peer}, checked: saved as {saved} ({:.1} s, {}/s)",
                        human_size(size),
                        secs,
                        human_size(rate as u64)
                    ),
                    Direction::Out => format!(
                        "{peer} received {name} ({}) whole and checked ({:.1} s, {}/s)",
                        human_size(size),
                        secs,
                        human_size(rate as u64)
                    ),
                };
                out.emit(
                    human,
                    json!({"event": "completed", "id": id.to_string(), "size": size, "path": transfer.path,
                           "seconds": secs, "bytes_per_second": rate, "resumed_from": from}),
                );
                return Ok(());
            }
            TransferState::Declined => {
                bar.abandon();
                return Err(Failure::new(
                    exit::NOT_DELIVERED,
                    anyhow!("{name}: declined"),
                ));
            }
            TransferState::Failed => {
                bar.abandon();
                return Err(
                    anyhow!("{name}: {}", transfer.error.as_deref().unwrap_or("failed")).into(),
                );
            }
            TransferState::Offered | TransferState::Accepted => {}
        }
    }
}

/// A size as written on the command line: bytes, or with a unit (k, KiB,
/// M, MiB, G, GiB; powers of 1024).
pub(crate) fn parse_size(text: &str) -> Result<u64, anyhow::Error> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| anyhow!("{text:?} is not a size: write e.g. 500k, 10MiB or 2G"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => return Err(anyhow!("unknown size unit {other:?}: use k, M, G or T")),
    };
    Ok((number * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("500").unwrap(), 500);
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("1.5k").unwrap(), 1536);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5 parsecs").is_err());
    }
}
