//! `gbuild key [--show|--export|--rotate|--withdraw FPR]`: the store's binpkg signing key. Created
//! on first use; hosts trust it with `gbuild host trust --fingerprint <what --show prints>`.

use anyhow::Context;
use gbuild::sign::{normalize_fingerprint, Keys, Opened};

use super::Ctx;

#[derive(clap::Args, Debug)]
#[group(multiple = false)]
pub struct KeyOpts {
    /// Print the current key's fingerprint (the default action)
    #[arg(long)]
    pub show: bool,
    /// Print the listed public keys, armored (what hosts fetch as /<M>/key.asc)
    #[arg(long)]
    pub export: bool,
    /// Make a new signing key; the old one stays listed until withdrawn
    #[arg(long)]
    pub rotate: bool,
    /// Stop listing a retired key; what it signed is signed again at the next publication
    #[arg(long, value_name = "FINGERPRINT")]
    pub withdraw: Option<String>,
}

pub fn run(ctx: &Ctx, o: KeyOpts) -> anyhow::Result<i32> {
    let store = ctx.store()?;
    if o.rotate {
        let (old, new) = Keys::rotate(&store)?;
        println!("{new}");
        ctx.note(&format!(
            "new signing key {new}; {old} stays listed. On each host: gbuild host trust \
             --binhost URL --fingerprint {new}; once all hosts trust it: gbuild key --withdraw {old}"
        ));
        return Ok(0);
    }
    if let Some(w) = o.withdraw {
        let fpr = normalize_fingerprint(&w)
            .with_context(|| format!("{w:?} is not a fingerprint (40 or 64 hex digits)"))?;
        Keys::withdraw(&store, &fpr)?;
        ctx.note(&format!(
            "withdrew {fpr}; its packages are signed again at the next publication. On each \
             host: gpg --homedir /etc/portage/gnupg --batch --yes --delete-keys {fpr}"
        ));
        return Ok(0);
    }
    let (keys, opened) = Keys::open(&store)?;
    if opened == Opened::Created {
        ctx.note(&format!("created signing key {}", keys.fingerprint()));
    }
    if o.export {
        print!("{}", keys.public_armored());
        return Ok(0);
    }
    println!("{}", keys.fingerprint());
    for old in keys.listed().iter().skip(1) {
        ctx.note(&format!("also listed (retired): {old}"));
    }
    Ok(0)
}
