//! The commands `wendy node` reads on stdin, one per line.

use wendy::id::{Key, NodeId};

/// A parsed stdin command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StdinCommand {
    /// `route KEY_HEX TEXT`: route TEXT to the node closest to the key.
    Route { key: Key, text: String },
    /// `send NODE_HEX TEXT`: send TEXT directly to a known node.
    Send { to: NodeId, text: String },
    /// `status`: print the status object.
    Status,
    /// `services`: print the service names known to this node.
    Services,
    /// `leave`: leave gracefully and exit.
    Leave,
    /// `subscribe TOPIC`: deliver the topic's messages as `topic_message` events.
    Subscribe { topic: String },
    /// `unsubscribe TOPIC`: stop delivering them.
    Unsubscribe { topic: String },
    /// `publish TOPIC TEXT`: publish TEXT on the topic.
    Publish { topic: String, text: String },
}

/// The usage line shown with every command error.
pub(crate) const USAGE: &str =
    "commands: route KEY_HEX TEXT | send NODE_HEX TEXT | subscribe TOPIC | unsubscribe TOPIC | \
     publish TOPIC TEXT | status | services | leave";

/// Parses one line; `Ok(None)` for a blank line.
pub(crate) fn parse(line: &str) -> Result<Option<StdinCommand>, String> {
    let line = line.trim_end_matches(['\r', '\n']);
    let trimmed = line.trim_start();
    if trimmed.trim().is_empty() {
        return Ok(None);
    }
    let (word, rest) = split_word(trimmed);
    let command = match word {
        "route" => {
            let (key, text) = split_word(rest);
            let key = key
                .parse::<Key>()
                .map_err(|e| format!("route: bad key {key:?}: {e}; {USAGE}"))?;
            StdinCommand::Route {
                key,
                text: text.to_owned(),
            }
        }
        "send" => {
            let (to, text) = split_word(rest);
            let to = to
                .parse::<NodeId>()
                .map_err(|e| format!("send: bad node id {to:?}: {e}; {USAGE}"))?;
            StdinCommand::Send {
                to,
                text: text.to_owned(),
            }
        }
        "subscribe" | "unsubscribe" => {
            let topic = rest.trim();
            wendy::topics::check_name(topic).map_err(|e| format!("{word}: {e}; {USAGE}"))?;
            let topic = topic.to_owned();
            if word == "subscribe" {
                StdinCommand::Subscribe { topic }
            } else {
                StdinCommand::Unsubscribe { topic }
            }
        }
        "publish" => {
            let (topic, text) = split_word(rest);
            wendy::topics::check_name(topic).map_err(|e| format!("publish: {e}; {USAGE}"))?;
            StdinCommand::Publish {
                topic: topic.to_owned(),
                text: text.to_owned(),
            }
        }
        "status" if rest.trim().is_empty() => StdinCommand::Status,
        "services" if rest.trim().is_empty() => StdinCommand::Services,
        "leave" if rest.trim().is_empty() => StdinCommand::Leave,
        "status" | "services" | "leave" => {
            return Err(format!("{word} takes no arguments; {USAGE}"))
        }
        other => return Err(format!("unknown command {other:?}; {USAGE}")),
    };
    Ok(Some(command))
}

/// The first space-separated word and the rest after exactly one separating space (so the
/// payload text keeps its own spacing).
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once(' ') {
        Some((word, rest)) => (word, rest),
        None => (text, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn commands_parse_with_their_text() {
        assert_eq!(
            parse(&format!("route {ID} hello  world\n")).unwrap(),
            Some(StdinCommand::Route {
                key: ID.parse().unwrap(),
                text: "hello  world".into()
            })
        );
        assert_eq!(
            parse(&format!("send {ID} hi")).unwrap(),
            Some(StdinCommand::Send {
                to: ID.parse().unwrap(),
                text: "hi".into()
            })
        );
        assert_eq!(parse("status").unwrap(), Some(StdinCommand::Status));
        assert_eq!(parse("leave\r\n").unwrap(), Some(StdinCommand::Leave));
        assert_eq!(parse("   ").unwrap(), None);
        assert_eq!(
            parse("subscribe lobby").unwrap(),
            Some(StdinCommand::Subscribe {
                topic: "lobby".into()
            })
        );
        assert_eq!(
            parse("publish lobby hi  there").unwrap(),
            Some(StdinCommand::Publish {
                topic: "lobby".into(),
                text: "hi  there".into()
            })
        );
    }

    #[test]
    fn bad_commands_say_what_is_wrong() {
        assert!(parse("fly away")
            .unwrap_err()
            .contains("unknown command \"fly\""));
        assert!(parse("route xyz hi").unwrap_err().contains("bad key"));
        assert!(parse("send 12 hi").unwrap_err().contains("bad node id"));
        assert!(parse("status now").unwrap_err().contains("no arguments"));
        assert!(parse("subscribe").unwrap_err().contains("cannot be empty"));
        assert!(parse("subscribe a b").unwrap_err().contains("whitespace"));
    }
}
