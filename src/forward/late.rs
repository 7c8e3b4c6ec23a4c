//! Late and long answers: a `forward`/`exec` rule with `late = "next_message"` or
//! `"customer_service"` lets the backend run past WeChat's three 5-second attempts, answers the
//! last attempt with `pending`, and delivers the answer afterwards — on the user's next message
//! or through the customer-service message API — split into parts when it is longer than a
//! text message may be. The settings are the rule's [`crate::rules::Late`] and the global
//! [`crate::config::LateSettings`]; delivery is in [`hub`], the state file in [`persist`].

pub mod hub;
pub mod persist;
