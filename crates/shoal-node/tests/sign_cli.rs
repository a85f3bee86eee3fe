//! `shoal-sign` as a publisher runs it: key creation, signing a live playlist's segments,
//! and clear failures.
#![allow(clippy::unwrap_used)] // a panic in a test is a failed test

use std::{fs, process::Command};

fn sign() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal-sign"))
}

#[test]
fn keygen_then_sign_a_playlist() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("publisher.key");
    let out = sign().args(["keygen", "--key"]).arg(&key).output().unwrap();
    assert!(out.status.success());
    let public = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert_eq!(public.len(), 64);
    assert!(public.bytes().all(|b| b.is_ascii_hexdigit()));
    // Same key on a second run, and `public-key` agrees.
    let again = sign().args(["keygen", "--key"]).arg(&key).output().unwrap();
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), public);
    let shown = sign().args(["public-key", "--key"]).arg(&key).output().unwrap();
    assert_eq!(String::from_utf8(shown.stdout).unwrap().trim(), public);

    fs::write(dir.path().join("s7.ts"), vec![3u8; 70_000]).unwrap();
    fs::write(dir.path().join("live.m3u8"), "#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:7\n#EXTINF:2,\ns7.ts\n").unwrap();
    let out = sign()
        .args(["playlist", "--swarm", "site/live", "--key"])
        .arg(&key)
        .arg(dir.path().join("live.m3u8"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8(out.stdout).unwrap().contains("s7.ts.shoal"));
    assert!(fs::metadata(dir.path().join("s7.ts.shoal")).unwrap().len() > 64);
}

#[test]
fn bad_key_file_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("publisher.key");
    fs::write(&key, b"not a key").unwrap();
    let out = sign().args(["public-key", "--key"]).arg(&key).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("not a 32-byte publisher key"), "{stderr}");

    let missing =
        sign().args(["playlist", "--swarm", "x", "--key"]).arg(&key).arg("/nonexistent/live.m3u8").output().unwrap();
    assert_eq!(missing.status.code(), Some(1));
}
