//! `shoal-sign`: the publisher's tool. Creates the publisher key and writes a signed
//! record (`<segment>.shoal`) next to every segment of an HLS media playlist or a DASH
//! manifest, so that
//! browsers can check segments they receive from other viewers. Run it beside the
//! packager (`--watch` for live), and serve the `.shoal` files with the segments.

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};
use shoal_core::Publisher;
use shoal_node::publish;

#[derive(Debug, Parser)]
#[command(name = "shoal-sign", version, about = "Sign HLS and DASH segments for Shoal (publisher side).")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create a publisher key (if the file does not exist) and print its public key.
    Keygen {
        /// Where the 32-byte secret key lives (created with mode 0600).
        #[arg(long, env = "SHOAL_PUBLISHER_KEY")]
        key: PathBuf,
    },
    /// Print the public key pages pass as `publisherKey`.
    PublicKey {
        #[arg(long, env = "SHOAL_PUBLISHER_KEY")]
        key: PathBuf,
    },
    /// Sign every segment a media playlist lists that has no up-to-date record yet.
    Playlist {
        #[command(flatten)]
        sign: SignArgs,
        /// Keep going: re-read the playlist every this many seconds (live streams).
        #[arg(long)]
        watch: Option<f64>,
        /// The media playlist (`.m3u8`), with its segments next to it.
        playlist: PathBuf,
    },
    /// Sign the media segments of every representation of a static DASH manifest
    /// (`SegmentTemplate` with `$Number$`: segment ids are those numbers).
    Mpd {
        #[command(flatten)]
        sign: SignArgs,
        /// The manifest (`.mpd`), with its segments next to it.
        mpd: PathBuf,
    },
    /// Sign one segment file, given its media sequence number.
    Segment {
        #[command(flatten)]
        sign: SignArgs,
        #[arg(long)]
        sequence: u64,
        file: PathBuf,
    },
}

/// What every signing command takes.
#[derive(Debug, Args)]
struct SignArgs {
    #[arg(long, env = "SHOAL_PUBLISHER_KEY")]
    key: PathBuf,
    /// The swarm id pages join (`swarmId`); for `mpd`, `$RepresentationID$` stands for
    /// each representation's id.
    #[arg(long)]
    swarm: String,
    /// Bytes per verified chunk [default: per segment, about 16 chunks, 16–64 KiB].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1024..=262_144))]
    chunk_size: Option<u32>,
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shoal-sign: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), shoal_node::NodeError> {
    match command {
        Command::Keygen { key } => {
            let publisher = Publisher::from_secret(publish::load_or_create_secret(&key)?);
            println!("{}", publisher.public_key().to_hex());
        }
        Command::PublicKey { key } => {
            let publisher = Publisher::from_secret(publish::load_secret(&key)?);
            println!("{}", publisher.public_key().to_hex());
        }
        Command::Playlist { sign: SignArgs { key, swarm, chunk_size }, watch, playlist } => {
            let publisher = Publisher::from_secret(publish::load_secret(&key)?);
            loop {
                let report = publish::sign_playlist(&publisher, &swarm, &playlist, chunk_size)?;
                for path in &report.signed {
                    println!("signed {}", path.display());
                }
                for uri in &report.skipped {
                    eprintln!("skipped {uri}: not a local file next to the playlist, or a byte range past its end");
                }
                match watch {
                    Some(seconds) if seconds > 0.0 => std::thread::sleep(Duration::from_secs_f64(seconds)),
                    _ => break,
                }
            }
        }
        Command::Mpd { sign: SignArgs { key, swarm, chunk_size }, mpd } => {
            let publisher = Publisher::from_secret(publish::load_secret(&key)?);
            let report = publish::sign_mpd(&publisher, &swarm, &mpd, chunk_size)?;
            for path in &report.signed {
                println!("signed {}", path.display());
            }
            for uri in &report.skipped {
                eprintln!("skipped {uri}: not a local file next to the manifest");
            }
        }
        Command::Segment { sign: SignArgs { key, swarm, chunk_size }, sequence, file } => {
            let publisher = Publisher::from_secret(publish::load_secret(&key)?);
            let data = std::fs::read(&file).map_err(|source| shoal_node::NodeError::Io {
                context: format!("reading {}", file.display()),
                source,
            })?;
            let out = PathBuf::from(format!("{}{}", file.display(), publish::RECORD_SUFFIX));
            std::fs::write(&out, publish::sign_segment(&publisher, &swarm, sequence, &data, chunk_size)).map_err(
                |source| shoal_node::NodeError::Io { context: format!("writing {}", out.display()), source },
            )?;
            println!("signed {}", out.display());
        }
    }
    Ok(())
}
