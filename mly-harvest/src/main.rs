//! The `mly-harvest` binary: parses arguments, sets up logging and the runtime, and turns every
//! error into one readable line and a documented exit code (see `exit`).

use std::io::{IsTerminal, Write};

use clap::Parser;
mod cli;
mod config;
mod exit;
mod images_cmd;
mod ops;
mod scope;
mod summary;

use cli::{Cli, LogFormat};
use mly_contract::secret::scrub;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

fn main() {
    // A panic is a bug: the hook prints one line, and the process ends with the README's code for
    // it (1), not Rust's 101.
    let code = std::panic::catch_unwind(real_main).unwrap_or(exit::INTERNAL);
    std::process::exit(code);
}

/// One error line on stderr: secrets scrubbed, control characters escaped (a crafted file name
/// must not move the cursor or recolour the terminal). A closed stderr is ignored, not a panic.
fn error_line(message: &str) {
    let line = cli::printable(&scrub(message));
    let _ = writeln!(std::io::stderr(), "mly-harvest: error: {line}");
}

fn real_main() -> i32 {
    install_panic_hook();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { exit::OK };
            let _ = e.print();
            return code;
        }
    };
    if let Err(e) = init_logging(&cli) {
        error_line(&e);
        return exit::CONFIG;
    }
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            error_line(&format!("cannot start the async runtime: {e}"));
            return exit::INTERNAL;
        }
    };
    let code = match rt.block_on(cli::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            error_line(&e.to_string().replace('\n', " "));
            e.exit_code()
        }
    };
    // Do not wait for lingering blocking tasks (e.g. a stuck DNS lookup) at exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(2));
    code
}

/// A panic is a bug: report it on one line, with secrets scrubbed, and no backtrace dump.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        let _ = writeln!(
            std::io::stderr(),
            "mly-harvest: internal error (a bug){at}: {}",
            cli::printable(&scrub(&payload))
        );
    }));
}

/// Log lines go through this writer, which scrubs registered secrets.
struct ScrubWriter<W: Write>(W);

impl<W: Write> Write for ScrubWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        self.0.write_all(scrub(&text).as_bytes())?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

fn init_logging(cli: &Cli) -> Result<(), String> {
    // The workspace's own crates log at the chosen level, dependencies one level quieter.
    let (ours, theirs) = match (cli.quiet, cli.verbose) {
        (true, _) => ("warn", "warn"),
        (false, 0) => ("info", "warn"),
        (false, 1) => ("debug", "info"),
        _ => ("trace", "debug"),
    };
    let default = ["mly_harvest", "mly_core", "mly_sim", "mly_contract"]
        .iter()
        .map(|c| format!("{c}={ours}"))
        .chain(std::iter::once(theirs.to_string()))
        .collect::<Vec<_>>()
        .join(",");
    let filter = EnvFilter::try_from_env("MLY_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false);
    let (writer, ansi) = match &cli.log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
            let file = std::sync::Arc::new(file);
            let w = BoxMakeWriter::new(move || {
                ScrubWriter(file.as_ref().try_clone().expect("cloning an open file handle"))
            });
            (w, false)
        }
        None => (BoxMakeWriter::new(|| ScrubWriter(std::io::stderr())), std::io::stderr().is_terminal()),
    };
    match cli.log_format {
        // One JSON object per line, fields at the top level, for log collectors.
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).with_writer(writer).init(),
        LogFormat::Text => builder.with_ansi(ansi).with_writer(writer).init(),
    }
    Ok(())
}
