//! Bearer tokens: the one way every component reads and checks one.
//!
//! The servers require a token when given `--token-file`; the CLI, the controller and the
//! servers' own peer transport read the same kind of file. Surrounding whitespace (a trailing
//! newline) is ignored; what is left must be at least [`MIN_TOKEN_LEN`] characters of visible
//! ASCII, since it travels in an HTTP header.

use std::path::Path;

/// The shortest token accepted: 16 characters (with `head -c 32 /dev/urandom | base64`, 44).
pub const MIN_TOKEN_LEN: usize = 16;

/// What is wrong with a token or its file. Never contains the token.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read token file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("the token{origin} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { origin: String },
    #[error("the token{origin} contains whitespace or characters outside visible ASCII")]
    Invalid { origin: String },
}

/// Checks a token; `origin` names where it came from in the error (e.g. " in FILE").
pub fn check_token(token: &str, origin: &str) -> Result<(), TokenError> {
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::Invalid {
            origin: origin.to_string(),
        });
    }
    if token.len() < MIN_TOKEN_LEN {
        return Err(TokenError::TooShort {
            origin: origin.to_string(),
        });
    }
    Ok(())
}

/// Reads and checks the token in `path`.
pub fn read_token_file(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let token = text.trim();
    check_token(token, &format!(" in {}", path.display()))?;
    Ok(token.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_files_are_trimmed_and_checked() {
        let dir = std::env::temp_dir().join(format!("bully-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "0123456789abcdef\n").unwrap();
        assert_eq!(read_token_file(&file).unwrap(), "0123456789abcdef");
        std::fs::write(&file, "short\n").unwrap();
        let err = read_token_file(&file).unwrap_err().to_string();
        assert!(
            err.contains("shorter than 16") && !err.contains("short\n"),
            "{err}"
        );
        std::fs::write(&file, "0123456789 abcdef").unwrap();
        assert!(matches!(
            read_token_file(&file),
            Err(TokenError::Invalid { .. })
        ));
        let missing = dir.join("missing");
        let err = read_token_file(&missing).unwrap_err().to_string();
        assert!(err.contains("cannot read token file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
