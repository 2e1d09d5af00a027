//! Settings written as text — on the command line and in TOML or JSON
//! files alike — go through one parser: the type's `FromStr`. clap calls it
//! for a flag, and [`serde_as_str!`](crate::serde_as_str) makes serde call
//! it for a file (and write the type with its `Display`), so a spelling the
//! command line accepts is accepted in a file too, and nothing else is.

/// Implements `Serialize` (through `Display`) and `Deserialize` (through
/// `FromStr`, whose error must be `Display`) for a type, so that files and
/// the command line share one parser. The crate using it needs `serde`.
///
/// ```
/// use std::str::FromStr;
/// #[derive(Debug, PartialEq)]
/// struct Even(u32);
/// impl FromStr for Even {
///     type Err = String;
///     fn from_str(s: &str) -> Result<Self, String> {
///         let n: u32 = s.parse().map_err(|e| format!("{s:?}: {e}"))?;
///         if n % 2 == 0 { Ok(Even(n)) } else { Err(format!("{n} is odd")) }
///     }
/// }
/// impl std::fmt::Display for Even {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         write!(f, "{}", self.0)
///     }
/// }
/// delphi_net::serde_as_str!(Even);
/// assert_eq!(serde_json::from_str::<Even>("\"4\"").unwrap(), Even(4));
/// assert!(serde_json::from_str::<Even>("\"3\"").unwrap_err().to_string().contains("odd"));
/// assert_eq!(serde_json::to_string(&Even(8)).unwrap(), "\"8\"");
/// ```
#[macro_export]
macro_rules! serde_as_str {
    ($t:ty) => {
        impl ::serde::Serialize for $t {
            fn serialize<S: ::serde::Serializer>(
                &self,
                s: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }
        impl<'de> ::serde::Deserialize<'de> for $t {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                d: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as ::serde::Deserialize>::deserialize(d)?;
                s.parse().map_err(::serde::de::Error::custom)
            }
        }
    };
}

/// Defines a setting that is one of a few names: the enum, `name()` (the
/// canonical spelling), `ALL`, `Display`, `FromStr` (the canonical names
/// and any aliases after `|`; anything else is an error that lists the
/// names) and serde through them ([`serde_as_str!`](crate::serde_as_str)).
/// The enum's own attributes (derives, docs) are the caller's; it must be
/// `Copy`.
///
/// ```
/// delphi_net::text_enum! {
///     /// How to go.
///     #[derive(Clone, Copy, Debug, PartialEq, Eq)]
///     pub enum Pace("pace") {
///         /// Slowly.
///         Walk = "walk" | "stroll",
///         /// Quickly.
///         Run = "run",
///     }
/// }
/// assert_eq!("stroll".parse::<Pace>(), Ok(Pace::Walk));
/// assert_eq!(Pace::Run.to_string(), "run");
/// assert_eq!("fly".parse::<Pace>().unwrap_err(), "unknown pace \"fly\" (walk, run)");
/// assert_eq!(serde_json::from_str::<Pace>("\"run\"").unwrap(), Pace::Run);
/// ```
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident ($what:literal) {
            $( $(#[$vmeta:meta])* $var:ident = $text:literal $(| $alias:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $name {
            $( $(#[$vmeta])* $var ),+
        }

        impl $name {
            /// Every value, in the order they are declared.
            pub const ALL: &'static [$name] = &[$($name::$var),+];

            /// The name used on the command line, in files and in tables.
            pub fn name(self) -> &'static str {
                match self {
                    $($name::$var => $text),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::string::String;
            fn from_str(s: &str) -> ::std::result::Result<Self, ::std::string::String> {
                match s {
                    $( $text $(| $alias)* => Ok($name::$var), )+
                    _ => Err(format!(
                        "unknown {} {:?} ({})",
                        $what,
                        s,
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        $crate::serde_as_str!($name);
    };
}
