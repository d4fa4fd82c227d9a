//! Masking of personal data for roles that may not read it: enough stays to tell two values
//! apart on a screen (`138****5678`, `a****@example.com`), not enough to contact anyone.

use serde_json::Value;

/// Traits that identify no one on their own and are stored in the clear (see
/// `docs/privacy.md`): never masked.
pub const CLEAR_TRAITS: &[&str] = patron_domain::touchpoint::CLEAR_TRAITS;

/// An identifier's value, masked by its kind.
pub fn identifier(kind: &str, value: &str) -> String {
    match kind {
        "phone" => phone(value),
        "email" => email(value),
        _ => tail(value, 4),
    }
}

/// A phone number in E.164 form as its national number with the middle hidden:
/// `+8613812345678` reads `138****5678`.
pub fn phone(value: &str) -> String {
    let national = phonenumber::parse(None, value)
        .map(|n| n.national().value().to_string())
        .unwrap_or_else(|_| value.chars().filter(char::is_ascii_digit).collect());
    let digits: Vec<char> = national.chars().collect();
    if digits.len() >= 11 {
        let head: String = digits[..3].iter().collect();
        let last: String = digits[digits.len() - 4..].iter().collect();
        format!("{head}****{last}")
    } else {
        // Shorter numbers (8 digits in Hong Kong, 9 in France) would show too much of
        // themselves as 3 + 4: only the last two digits stay.
        tail(&national, 2)
    }
}

/// An email address with the local part hidden but its first letter: `a****@example.com`.
pub fn email(value: &str) -> String {
    match value.split_once('@') {
        Some((local, domain)) => {
            // A local part shorter than 3 characters is hidden whole.
            let first: String = if local.chars().count() >= 3 {
                local.chars().take(1).collect()
            } else {
                String::new()
            };
            format!("{first}****@{domain}")
        }
        None => tail(value, 2),
    }
}

/// All but the last `keep` characters hidden (all of them for short values).
pub fn tail(value: &str, keep: usize) -> String {
    let chars: Vec<char> = value.chars().collect();
    if chars.len() <= keep * 2 {
        return "****".to_owned();
    }
    let last: String = chars[chars.len() - keep..].iter().collect();
    format!("****{last}")
}

/// A trait's value masked unless it is a clear trait: text of 3 characters or more starting
/// with a letter keeps it (`Li Wei` reads `L****`); numbers, dates, booleans and anything else
/// read `****`.
pub fn trait_value(name: &str, value: &Value) -> Value {
    if CLEAR_TRAITS.contains(&name) || value.is_null() {
        return value.clone();
    }
    match value {
        Value::String(s) => match s.chars().next() {
            Some(first) if first.is_alphabetic() && s.chars().count() >= 3 => {
                Value::String(format!("{first}****"))
            }
            _ => Value::String("****".to_owned()),
        },
        _ => Value::String("****".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn phones_show_the_national_prefix_and_last_four_digits() {
        assert_eq!(phone("+8613812345678"), "138****5678");
        assert_eq!(
            phone("+14155550123"),
            "****23",
            "10 digits: the last two only"
        );
        assert_eq!(
            phone("+85291234567"),
            "****67",
            "8 digits: the last two only"
        );
        assert_eq!(identifier("phone", "+8613812345678"), "138****5678");
    }

    #[test]
    fn emails_show_the_first_letter_and_the_domain() {
        assert_eq!(email("alice@example.com"), "a****@example.com");
        assert_eq!(identifier("email", "bob.li@shop.cn"), "b****@shop.cn");
        assert_eq!(
            email("a@qq.com"),
            "****@qq.com",
            "a short local part is hidden whole"
        );
    }

    #[test]
    fn other_identifiers_show_their_last_four_characters() {
        assert_eq!(identifier("member_card", "MC-20261234"), "****1234");
        assert_eq!(identifier("device_id", "abc"), "****");
    }

    #[test]
    fn traits_are_masked_unless_clear() {
        assert_eq!(trait_value("name", &json!("Li Wei")), json!("L****"));
        assert_eq!(trait_value("birthday", &json!("1990-01-02")), json!("****"));
        assert_eq!(trait_value("city", &json!("Shanghai")), json!("Shanghai"));
        assert_eq!(trait_value("age", &json!(34)), json!("****"));
        assert_eq!(trait_value("diabetic", &json!(true)), json!("****"));
        assert_eq!(trait_value("name", &json!("李")), json!("****"));
    }
}
