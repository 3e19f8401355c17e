//! Merging a request's changes into a session that another request changed meanwhile.
//!
//! A request reads the session at version *v* (its "base") and writes back only if the row is
//! still at *v*. When it is not, the store reads the fresh state and merges, key by key:
//! - keys this request did not change take the fresh value (the other request's work stays);
//! - the cart takes the fresh cart with this request's [`CartChange`]s made again on it;
//! - pending logins take the fresh list, plus the ones this request started, minus the ones
//!   it completed (several tabs may log in at once);
//! - any other key this request changed keeps its new value if the other request left it
//!   alone, and is a [`Conflict`] if both changed it differently.

use std::collections::{HashMap, HashSet};

use super::{PENDING_LOGINS_KEY, PendingLogin};
use crate::shop::cart::{CART_KEY, Cart, CartChange};

pub type State = HashMap<String, String>;

/// Both requests changed `key`, differently, and there is no rule to combine them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the session's `{0}` was changed by another request at the same time")]
pub struct Conflict(pub String);

/// `mine` (this request's state, read as `base`) merged into `fresh`.
pub fn merge(
    base: &State,
    mine: &State,
    fresh: &State,
    cart_changes: &[CartChange],
) -> Result<State, Conflict> {
    let mut merged = fresh.clone();
    let keys: HashSet<&String> = base.keys().chain(mine.keys()).collect();
    for key in keys {
        let (was, now, theirs) = (base.get(key), mine.get(key), fresh.get(key));
        if was == now {
            continue; // not changed by this request: the fresh value stands
        }
        let value = if theirs == was {
            now.cloned()
        } else if key == CART_KEY {
            // Both changed the cart: the same result from different changes (two adds of one
            // mug) is still two changes, so they are made again rather than compared.
            replay_cart(theirs, cart_changes).ok_or_else(|| Conflict(key.clone()))?
        } else if theirs == now {
            now.cloned()
        } else if key == PENDING_LOGINS_KEY {
            merge_pending(was, now, theirs)
        } else {
            return Err(Conflict(key.clone()));
        };
        match value {
            Some(value) => merged.insert(key.clone(), value),
            None => merged.remove(key),
        };
    }
    Ok(merged)
}

/// The fresh cart with this request's changes made again; `None` (a conflict) if the cart
/// changed without recorded changes.
fn replay_cart(fresh: Option<&String>, changes: &[CartChange]) -> Option<Option<String>> {
    if changes.is_empty() {
        return None;
    }
    let mut cart: Cart = fresh
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default();
    for change in changes {
        cart.replay(change);
    }
    Some((!cart.is_empty()).then(|| serde_json::to_string(&cart).expect("a cart serializes")))
}

fn pending(value: Option<&String>) -> Vec<PendingLogin> {
    value
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

/// Logins started by this request are added, those it completed removed; the other
/// request's additions and removals stay.
fn merge_pending(
    base: Option<&String>,
    mine: Option<&String>,
    fresh: Option<&String>,
) -> Option<String> {
    let (base, mine, fresh) = (pending(base), pending(mine), pending(fresh));
    let had = |list: &[PendingLogin], p: &PendingLogin| list.iter().any(|q| q.state == p.state);
    let mut merged: Vec<PendingLogin> = fresh
        .into_iter()
        // Kept unless this request completed it (it was in the base and is not in mine).
        .filter(|p| !had(&base, p) || had(&mine, p))
        .collect();
    for started in mine.iter().filter(|p| !had(&base, p)) {
        if !had(&merged, started) {
            merged.push(started.clone());
        }
    }
    (!merged.is_empty()).then(|| serde_json::to_string(&merged).expect("pending logins serialize"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(pairs: &[(&str, &str)]) -> State {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn cart_of(lines: &[(i64, u32)]) -> String {
        let mut cart = Cart::default();
        for (product_id, quantity) in lines {
            cart.replay(&CartChange::Add {
                product_id: *product_id,
                quantity: *quantity,
            });
        }
        serde_json::to_string(&cart).unwrap()
    }

    #[test]
    fn changes_to_different_keys_both_stay() {
        let base = state(&[("a", "1")]);
        let mine = state(&[("a", "1"), ("b", "2")]);
        let fresh = state(&[("a", "1"), ("c", "3")]);
        let merged = merge(&base, &mine, &fresh, &[]).unwrap();
        assert_eq!(merged, state(&[("a", "1"), ("b", "2"), ("c", "3")]));
    }

    #[test]
    fn the_same_key_changed_differently_is_a_conflict() {
        let base = state(&[("token_id", "\"a\"")]);
        let mine = state(&[("token_id", "\"b\"")]);
        let fresh = state(&[("token_id", "\"c\"")]);
        assert_eq!(
            merge(&base, &mine, &fresh, &[]),
            Err(Conflict("token_id".into()))
        );
        // The same change on both sides is no conflict.
        assert!(merge(&base, &mine, &mine, &[]).is_ok());
    }

    #[test]
    fn cart_changes_are_made_again_on_the_fresh_cart() {
        let base = state(&[("cart", &cart_of(&[(1, 1)]))]);
        let mine = state(&[("cart", &cart_of(&[(1, 1), (2, 1)]))]);
        let fresh = state(&[("cart", &cart_of(&[(1, 1), (3, 1)]))]);
        let add = CartChange::Add {
            product_id: 2,
            quantity: 1,
        };
        let merged = merge(&base, &mine, &fresh, &[add]).unwrap();
        assert_eq!(merged["cart"], cart_of(&[(1, 1), (3, 1), (2, 1)]));
    }

    #[test]
    fn an_add_racing_a_checkout_keeps_only_the_new_line() {
        // Checkout emptied the cart after ordering product 1; this request added product 2.
        let base = state(&[("cart", &cart_of(&[(1, 2)]))]);
        let mine = state(&[("cart", &cart_of(&[(1, 2), (2, 1)]))]);
        let fresh = state(&[]);
        let add = CartChange::Add {
            product_id: 2,
            quantity: 1,
        };
        let merged = merge(&base, &mine, &fresh, &[add]).unwrap();
        assert_eq!(merged["cart"], cart_of(&[(2, 1)]));
    }

    #[test]
    fn pending_logins_from_several_tabs_are_all_kept() {
        let login = |s: &str| PendingLogin {
            state: s.into(),
            nonce: "n".into(),
            pkce_verifier: "v".into(),
            return_to: "/".into(),
            created_at: 0,
            step_up: None,
            provider: String::new(),
        };
        let json = |v: &[PendingLogin]| serde_json::to_string(v).unwrap();
        let base = state(&[(PENDING_LOGINS_KEY, &json(&[login("old")]))]);
        // This request completed "old" and started "mine"; the other started "theirs".
        let mine = state(&[(PENDING_LOGINS_KEY, &json(&[login("mine")]))]);
        let fresh = state(&[(PENDING_LOGINS_KEY, &json(&[login("old"), login("theirs")]))]);
        let merged = merge(&base, &mine, &fresh, &[]).unwrap();
        let states: Vec<String> = pending(merged.get(PENDING_LOGINS_KEY))
            .into_iter()
            .map(|p| p.state)
            .collect();
        assert_eq!(states, ["theirs", "mine"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        fn adds() -> impl Strategy<Value = Vec<(i64, u32)>> {
            prop::collection::vec((1i64..8, 1u32..5), 0..6)
        }

        fn apply(cart: &mut Cart, adds: &[(i64, u32)]) -> Vec<CartChange> {
            let changes: Vec<CartChange> = adds
                .iter()
                .map(|(product_id, quantity)| CartChange::Add {
                    product_id: *product_id,
                    quantity: *quantity,
                })
                .collect();
            for change in &changes {
                cart.replay(change);
            }
            changes
        }

        fn total(cart: &Cart, product_id: i64) -> u32 {
            cart.lines()
                .iter()
                .find(|l| l.product_id == product_id)
                .map_or(0, |l| l.quantity)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Two requests add to the same cart at once; whichever writes second merges:
            /// every quantity is the sum of both (within the bounds), nothing is lost.
            #[test]
            fn concurrent_adds_all_count(start in adds(), first in adds(), second in adds()) {
                let mut base_cart = Cart::default();
                apply(&mut base_cart, &start);
                let base: State = [(CART_KEY.to_owned(), serde_json::to_string(&base_cart).unwrap())].into();

                let mut theirs = base_cart.clone();
                apply(&mut theirs, &first);
                let fresh: State = [(CART_KEY.to_owned(), serde_json::to_string(&theirs).unwrap())].into();

                let mut mine_cart = base_cart.clone();
                let changes = apply(&mut mine_cart, &second);
                let mine: State = [(CART_KEY.to_owned(), serde_json::to_string(&mine_cart).unwrap())].into();

                let merged = merge(&base, &mine, &fresh, &changes).unwrap();
                let cart: Cart = merged
                    .get(CART_KEY)
                    .map(|json| serde_json::from_str(json).unwrap())
                    .unwrap_or_default();
                for product_id in 1..8 {
                    let sum = |adds: &[(i64, u32)]| -> u32 {
                        adds.iter().filter(|(p, _)| *p == product_id).map(|(_, q)| q).sum()
                    };
                    let expected = (sum(&start) + sum(&first) + sum(&second)).min(crate::shop::cart::MAX_QUANTITY);
                    prop_assert_eq!(total(&cart, product_id), expected, "product {}", product_id);
                }
            }
        }
    }
}
