//! One-time host preparation by root (`gbuild setup-host --user NAME`).
