//! Validated names. Every name the agent hands to a host tool (`systemctl`, `apt-get`,
//! `chown`, the Docker engine) or uses as a file stem is one of these types, checked once
//! where the value enters the model (`TryFrom`, also on deserialization: JSON keeps the
//! plain strings). Code after the edge never re-checks and never sees a name that could
//! be read as an option, a path or a second argument.

use super::ModelError;

/// Defines a string newtype whose only constructor is `TryFrom` through `$check`.
macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident, $what:literal, $check:path) => {
        $(#[$doc])*
        #[derive(
            Debug,
            Clone,
            PartialEq,
            Eq,
            PartialOrd,
            Ord,
            Hash,
            serde::Serialize,
            serde::Deserialize,
        )]
        #[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ModelError;
            fn try_from(s: String) -> Result<Self, ModelError> {
                match $check(&s) {
                    Ok(()) => Ok($name(s)),
                    Err(reason) => Err(ModelError::Name {
                        what: $what,
                        value: s,
                        reason,
                    }),
                }
            }
        }

        impl TryFrom<&str> for $name {
            type Error = ModelError;
            fn try_from(s: &str) -> Result<Self, ModelError> {
                $name::try_from(s.to_string())
            }
        }

        impl std::str::FromStr for $name {
            type Err = ModelError;
            fn from_str(s: &str) -> Result<Self, ModelError> {
                $name::try_from(s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<std::ffi::OsStr> for $name {
            fn as_ref(&self) -> &std::ffi::OsStr {
                self.0.as_ref()
            }
        }

        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

name_type!(
    /// A systemd unit name with its suffix (`nginx.service`, `network-online.target`):
    /// `[A-Za-z0-9:_.\@-]`, at most 255 bytes, no path, not starting with `-` (it is
    /// passed to `systemctl` and used as a file name under /etc/systemd/system).
    UnitName,
    "unit name",
    check_unit
);

name_type!(
    /// A Debian package name (policy 5.6.1): lowercase letters, digits and `+ - .`, at
    /// least two characters, starting with a letter or digit. Architecture qualifiers
    /// (`name:arch`) are refused: the agent observes packages by plain name.
    PackageName,
    "package name",
    check_package
);

name_type!(
    /// A user or group: a POSIX-portable account name (`[A-Za-z0-9._-]`, not starting
    /// with `-`, at most 32 bytes, as `useradd` accepts) or a numeric id.
    AccountName,
    "user/group name",
    check_account
);

name_type!(
    /// A Docker container name as the engine accepts it: `[A-Za-z0-9][A-Za-z0-9_.-]+`.
    ContainerName,
    "container name",
    check_container
);

name_type!(
    /// A resource's own name (cert, exec, apt source) or a drop-in key: letters, digits,
    /// `-_.`, at most 128 bytes. It becomes part of file names (`<name>.sources`,
    /// `<key>.conf`), so it carries no `/` and no blank.
    SimpleName,
    "name",
    check_simple
);

name_type!(
    /// An environment variable name (`[A-Za-z_][A-Za-z0-9_]*`): rendered unquoted into
    /// unit and environment files and passed to processes, so nothing else may appear.
    EnvName,
    "environment variable name",
    check_env
);

const UNIT_SUFFIXES: [&str; 11] = [
    ".service",
    ".socket",
    ".timer",
    ".target",
    ".mount",
    ".automount",
    ".path",
    ".swap",
    ".slice",
    ".scope",
    ".device",
];

fn check_unit(s: &str) -> Result<(), &'static str> {
    if s.is_empty() || s.len() > 255 {
        return Err("is not a systemd unit name (1 to 255 bytes)");
    }
    if s.starts_with('-') {
        return Err("is not a systemd unit name (may not start with '-')");
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b':' | b'-' | b'_' | b'.' | b'@' | b'\\'))
    {
        return Err("is not a systemd unit name (letters, digits and ':-_.@\\' only, no paths)");
    }
    if !UNIT_SUFFIXES
        .iter()
        .any(|x| s.ends_with(x) && s.len() > x.len())
    {
        return Err("is not a systemd unit name (needs a suffix such as .service or .target)");
    }
    Ok(())
}

fn check_package(s: &str) -> Result<(), &'static str> {
    let ok = (2..=128).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.')
        });
    if ok {
        Ok(())
    } else {
        Err(
            "is not a Debian package name (lowercase letters, digits, '+-.', at least two, starting with a letter or digit)",
        )
    }
}

pub(crate) fn check_account(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 32
        && !s.starts_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(
            "is not a user/group name or numeric id (letters, digits, '_-.', not starting with '-', at most 32)",
        )
    }
}

fn check_container(s: &str) -> Result<(), &'static str> {
    let ok = (2..=128).contains(&s.len())
        && s.as_bytes()[0].is_ascii_alphanumeric()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("is not a Docker container name ([A-Za-z0-9][A-Za-z0-9_.-]+, at most 128)")
    }
}

fn check_env(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 255
        && !s.as_bytes()[0].is_ascii_digit()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err("is not a variable name (letters, digits, '_', not starting with a digit)")
    }
}

pub(crate) fn check_simple(s: &str) -> Result<(), &'static str> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err("may only contain letters, digits, '-', '_' and '.' (at most 128)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        for ok in [
            "nginx.service",
            "getty@tty1.service",
            "network-online.target",
        ] {
            assert!(UnitName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "nginx",
            ".service",
            "-x.service",
            "../x.service",
            "a b.service",
            "x.service\n",
        ] {
            let e = UnitName::try_from(bad).expect_err(bad);
            assert!(e.to_string().starts_with("invalid unit name"), "{e}");
        }
        assert!(UnitName::try_from(format!("{}.service", "a".repeat(248))).is_err());
    }

    #[test]
    fn package_names() {
        for ok in [
            "nginx",
            "g++",
            "libc6",
            "docker.io",
            "nvidia-container-toolkit",
        ] {
            assert!(PackageName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["x", "Nginx", "-x", "ng;rm", "libc6:i386", "a b"] {
            assert!(PackageName::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn account_and_container_names() {
        for ok in ["root", "www-data", "1000", "svc.user_1"] {
            assert!(AccountName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-r", "a:b", "x/y", &"a".repeat(33)] {
            assert!(AccountName::try_from(bad).is_err(), "{bad}");
        }
        assert!(ContainerName::try_from("portainer_server").is_ok());
        assert!(EnvName::try_from("VLLM_API_KEY").is_ok());
        for bad in ["", "1X", "A-B", "A=B", "A B"] {
            assert!(EnvName::try_from(bad).is_err(), "{bad}");
        }
        for bad in ["p", "_p", "a/b", "a b", "--rm"] {
            assert!(ContainerName::try_from(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_keeps_plain_strings_and_refuses_bad_names() {
        let n: UnitName = serde_json::from_str("\"nginx.service\"").expect("valid");
        assert_eq!(
            serde_json::to_string(&n).expect("json"),
            "\"nginx.service\""
        );
        let e = serde_json::from_str::<PackageName>("\"ng;rm\"").expect_err("refused");
        assert!(
            e.to_string().contains("invalid package name \"ng;rm\""),
            "{e}"
        );
    }
}
