//! Channel attribution: how many conversions each channel earns, under five models.
//!
//! The input is one [`Journey`] per customer: the channels of their touchpoints in time order (up
//! to the conversion, for customers who converted) and whether they converted. [`attribute`]
//! hands out every conversion among the channels of its journey. Credits are in conversions:
//! under each model the credits of all channels add up to [`Attribution::conversions`], the
//! converting journeys with at least one touch. A channel's share is its credit divided by that
//! total. Journeys with no touches earn nobody anything; they are counted apart.
//!
//! The models, for a converting journey of n touches:
//!
//! - **Last touch**: the channel of the last touch gets the conversion.
//! - **First touch**: the channel of the first touch gets it.
//! - **Linear**: every touch gets 1/n, so a channel touched k times gets k/n.
//! - **Shapley**: the Shapley value (L. S. Shapley, "A value for n-person games", 1953) of the
//!   game whose players are the channels and whose worth of a coalition S is
//!   v(S) = the number of converting journeys whose set of touched channels is a subset of S,
//!   the conversions the channels of S bring about without the others. Channel i gets
//!   phi_i = sum over coalitions S without i of |S|! (N - |S| - 1)! / N! * (v(S + i) - v(S)),
//!   N being the number of channels: its marginal worth averaged over all orders in which the
//!   channels can join. The order and repetition of touches do not matter to it, and since v
//!   counts conversions, neither do journeys that did not convert. As v is a sum of unanimity
//!   games, one per converting journey, phi_i equals the sum, over converting journeys touching
//!   i, of 1 / (the number of distinct channels the journey touched): the "simplified Shapley
//!   value" of Zhao, Mahboobi and Bagheri, "Shapley Value Methods for Attribution Modeling in
//!   Online Advertising" (2018). Credits are never negative.
//! - **Shapley over conversion rates** (`shapley_rate`): the Shapley value of the game on the
//!   same players whose worth of a coalition is a conversion probability, as in the
//!   data-driven attribution of Dalessandro, Perlich, Stitelman and Provost, "Causally
//!   motivated attribution for online advertising" (ADKDD 2012). Here it is estimated by
//!   v_rate(S) = (converting journeys whose set of channels is a subset of S) / (all journeys
//!   whose set of channels is a subset of S), and 0 when no journey's set is a subset of S
//!   (so v_rate of the empty coalition is 0). Journeys with no touches are left out of both
//!   counts. Unlike v, v_rate weighs journeys that did not convert: they lower the rate of
//!   every coalition containing their channels. The Shapley values phi_i of v_rate add up to
//!   v_rate(N), the overall conversion rate; they are turned into conversions as
//!   credit_i = phi_i / v_rate(N) * conversions, so that, as under the other models, the
//!   credits add up to the conversions (all credits are 0 when there are no conversions).
//!   v_rate is not monotone, so **a credit may be negative**: a channel whose presence lowers
//!   the conversion rate, such as one touched only in journeys that did not convert, gets a
//!   negative credit (and the others together more than all conversions). Such credits are
//!   kept as they are, not clipped at 0, and shares may likewise be negative or exceed 1.
//!
//! Both Shapley values are computed exactly over all 2^N coalitions: journeys are counted per
//! set of channels (a bitmask), converting ones and all of them, and the two counts of every
//! coalition follow by a subset-sum (zeta) transform. The count game's phi_i is summed in
//! integers as a multiple of 1/N! and divided once; the rate game's in floating point. This
//! takes O(touches + 2^N * N) time and limits the input to [`MAX_CHANNELS`] distinct channels,
//! counted over all journeys, converting or not.

use std::collections::BTreeSet;

use serde::Serialize;
use thiserror::Error;

/// The most distinct channels [`attribute`] accepts (the Shapley values are exact, over 2^N
/// coalitions).
pub const MAX_CHANNELS: usize = 12;

/// One customer's journey: the channels of their touchpoints and whether they converted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Journey<'a> {
    /// The channels of the touchpoints in time order; for a converting journey, those up to the
    /// conversion.
    pub touches: Vec<&'a str>,
    /// Whether the journey ended in a conversion.
    pub converted: bool,
}

impl<'a> Journey<'a> {
    /// A journey through `touches` (channels in time order) that did or did not convert.
    pub fn new(touches: Vec<&'a str>, converted: bool) -> Self {
        Self { touches, converted }
    }
}

/// One number per attribution model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ByModel {
    /// Under the last-touch model.
    pub last_touch: f64,
    /// Under the first-touch model.
    pub first_touch: f64,
    /// Under the linear model.
    pub linear: f64,
    /// Under the Shapley value of the conversion-count game (never negative).
    pub shapley: f64,
    /// Under the Shapley value of the conversion-rate game, scaled to conversions. May be
    /// negative, for a channel whose presence lowers the conversion rate.
    pub shapley_rate: f64,
}

impl ByModel {
    fn scaled(self, factor: f64) -> Self {
        Self {
            last_touch: self.last_touch * factor,
            first_touch: self.first_touch * factor,
            linear: self.linear * factor,
            shapley: self.shapley * factor,
            shapley_rate: self.shapley_rate * factor,
        }
    }
}

/// What one channel earns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChannelCredit {
    /// The channel's name, as in the journeys.
    pub channel: String,
    /// Conversions credited to the channel by each model.
    pub credit: ByModel,
    /// The credit as a fraction of [`Attribution::conversions`] (0 when there are none). Under
    /// `shapley_rate` it may be negative or above 1.
    pub share: ByModel,
}

/// The attribution of a set of journeys.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Attribution {
    /// Every channel touched in any journey, converting or not, sorted by name.
    pub channels: Vec<ChannelCredit>,
    /// Journeys given.
    pub journeys: u64,
    /// Converting journeys with at least one touch: the conversions each model hands out.
    pub conversions: u64,
    /// Journeys with no touches, converting or not, which credit no channel.
    pub empty_journeys: u64,
    /// Converting journeys with no touches (included in `empty_journeys`).
    pub unattributed_conversions: u64,
}

impl Attribution {
    /// The credit of the channel named `channel`, if any journey touched it.
    pub fn channel(&self, channel: &str) -> Option<&ChannelCredit> {
        self.channels
            .binary_search_by(|credit| credit.channel.as_str().cmp(channel))
            .ok()
            .map(|at| &self.channels[at])
    }
}

/// Why journeys could not be attributed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum AttributionError {
    /// The journeys touch more distinct channels than the exact Shapley values allow.
    #[error("the journeys touch {count} distinct channels; attribution handles at most {limit}")]
    TooManyChannels {
        /// Distinct channels in the journeys.
        count: usize,
        /// [`MAX_CHANNELS`].
        limit: usize,
    },
}

/// Credits each converting journey's conversion to its channels under the last-touch,
/// first-touch, linear, Shapley and conversion-rate Shapley models (see the module
/// documentation), in conversions.
///
/// Fails if the journeys touch more than [`MAX_CHANNELS`] distinct channels. Takes
/// O(touches + 2^N * N) time for N distinct channels.
pub fn attribute(journeys: &[Journey<'_>]) -> Result<Attribution, AttributionError> {
    let mut channels = Channels::default();
    let mut last_touch = [0u64; MAX_CHANNELS];
    let mut first_touch = [0u64; MAX_CHANNELS];
    let mut linear = [0f64; MAX_CHANNELS];
    // Converting journeys per set of channels touched, bit i standing for `channels.names[i]`.
    let mut per_set = vec![0u64; 1 << MAX_CHANNELS];
    // All journeys with at least one touch per set of channels touched, converting or not.
    let mut touched_per_set = vec![0u64; 1 << MAX_CHANNELS];
    let mut result = Attribution {
        journeys: journeys.len() as u64,
        ..Attribution::default()
    };

    for journey in journeys {
        let touches = &journey.touches;
        if touches.is_empty() {
            result.empty_journeys += 1;
            if journey.converted {
                result.unattributed_conversions += 1;
            }
            continue;
        }
        if !journey.converted {
            let mut set = 0usize;
            for &channel in touches {
                let at = channels
                    .index_of(channel)
                    .ok_or_else(|| too_many(journeys))?;
                set |= 1 << at;
            }
            touched_per_set[set] += 1;
            continue;
        }
        let each = 1.0 / touches.len() as f64;
        let mut set = 0usize;
        let mut first = None;
        let mut last = 0;
        for &channel in touches {
            let at = channels
                .index_of(channel)
                .ok_or_else(|| too_many(journeys))?;
            set |= 1 << at;
            linear[at] += each;
            first.get_or_insert(at);
            last = at;
        }
        if let Some(first) = first {
            first_touch[first] += 1;
        }
        last_touch[last] += 1;
        per_set[set] += 1;
        touched_per_set[set] += 1;
        result.conversions += 1;
    }

    let names = channels.names;
    let count = names.len();
    let converting = &mut per_set[..1 << count];
    let touched = &mut touched_per_set[..1 << count];
    subset_sums(converting, count);
    subset_sums(touched, count);
    let shapley = shapley(converting, count);
    let shapley_rate = shapley_rate(converting, touched, count);
    let per_conversion = if result.conversions == 0 {
        0.0
    } else {
        1.0 / result.conversions as f64
    };
    let mut order: Vec<usize> = (0..count).collect();
    order.sort_unstable_by_key(|&at| names[at]);
    result.channels = order
        .into_iter()
        .map(|at| {
            let credit = ByModel {
                last_touch: last_touch[at] as f64,
                first_touch: first_touch[at] as f64,
                linear: linear[at],
                shapley: shapley[at],
                shapley_rate: shapley_rate[at],
            };
            ChannelCredit {
                channel: names[at].to_owned(),
                credit,
                share: credit.scaled(per_conversion),
            }
        })
        .collect();
    Ok(result)
}

/// The distinct channels met so far, each standing for one bit of a channel set.
#[derive(Default)]
struct Channels<'a> {
    names: Vec<&'a str>,
    /// [`quick_key`] of each name (0 past the last), compared before the names themselves.
    keys: [u64; MAX_CHANNELS],
}

impl<'a> Channels<'a> {
    /// The index of `channel`, added if new; `None` if it is new and [`MAX_CHANNELS`] are known.
    fn index_of(&mut self, channel: &'a str) -> Option<usize> {
        let key = quick_key(channel);
        // Every slot is compared, without branches; names are compared only where keys match.
        let mut matches = 0u32;
        for (at, &known) in self.keys.iter().enumerate() {
            matches |= u32::from(known == key) << at;
        }
        matches &= (1u32 << self.names.len()) - 1;
        while matches != 0 {
            let at = matches.trailing_zeros() as usize;
            let name = self.names[at];
            if std::ptr::eq(name, channel) || name == channel {
                return Some(at);
            }
            matches &= matches - 1;
        }
        let at = self.names.len();
        if at == MAX_CHANNELS {
            return None;
        }
        self.names.push(channel);
        self.keys[at] = key;
        Some(at)
    }
}

/// The length and the first, middle and last bytes of `channel` in one word: equal names have
/// equal keys, so only names with the key of `channel` need comparing with it.
fn quick_key(channel: &str) -> u64 {
    let bytes = channel.as_bytes();
    let len = bytes.len();
    match (bytes.first(), bytes.get(len / 2), bytes.last()) {
        (Some(&first), Some(&middle), Some(&last)) => {
            len as u64
                ^ (u64::from(middle) << 40)
                ^ (u64::from(first) << 48)
                ^ (u64::from(last) << 56)
        }
        _ => 0,
    }
}

fn too_many(journeys: &[Journey<'_>]) -> AttributionError {
    let count = journeys
        .iter()
        .flat_map(|journey| journey.touches.iter().copied())
        .collect::<BTreeSet<&str>>()
        .len();
    AttributionError::TooManyChannels {
        count,
        limit: MAX_CHANNELS,
    }
}

/// Zeta transform over `count` bits: afterwards `per_set[s]` is the sum of the former
/// `per_set[t]` over the subsets t of s. `per_set` has 2^count entries.
fn subset_sums(per_set: &mut [u64], count: usize) {
    for bit in (0..count).map(|i| 1usize << i) {
        for set in 0..per_set.len() {
            if set & bit != 0 {
                per_set[set] += per_set[set ^ bit];
            }
        }
    }
}

/// 0! to [`MAX_CHANNELS`]!.
fn factorials() -> [u128; MAX_CHANNELS + 1] {
    let mut factorial = [1u128; MAX_CHANNELS + 1];
    for k in 1..=MAX_CHANNELS {
        factorial[k] = factorial[k - 1] * k as u128;
    }
    factorial
}

/// The Shapley value of each of `count` channels in the conversion-count game, given its worth
/// v of every coalition (`worth`, 2^count entries: converting journeys whose channel set is a
/// subset of the coalition).
fn shapley(worth: &[u64], count: usize) -> Vec<f64> {
    let factorial = factorials();
    // weight[k] / N! is the Shapley weight of a coalition of k players without i.
    let weight: Vec<u128> = (0..count)
        .map(|k| factorial[k] * factorial[count - 1 - k])
        .collect();
    let orders = factorial[count] as f64;

    (0..count)
        .map(|i| {
            let bit = 1usize << i;
            // At most N! * conversions, far within u128.
            let mut sum = 0u128;
            for set in (0..worth.len()).filter(|set| set & bit == 0) {
                // v is monotone: a coalition's worth counts every journey its subsets count.
                let gain = worth[set | bit] - worth[set];
                sum += weight[set.count_ones() as usize] * u128::from(gain);
            }
            sum as f64 / orders
        })
        .collect()
}

/// The credit of each of `count` channels in the conversion-rate game: its Shapley value
/// phi_i / v_rate(N) * conversions. `converting` and `touched` (2^count entries each) hold, per
/// coalition, the converting journeys and all journeys whose channel set is a subset of it.
fn shapley_rate(converting: &[u64], touched: &[u64], count: usize) -> Vec<f64> {
    let all = (1usize << count) - 1;
    let conversions = converting.get(all).copied().unwrap_or(0);
    let journeys = touched.get(all).copied().unwrap_or(0);
    if conversions == 0 || journeys == 0 {
        return vec![0.0; count];
    }
    // v_rate of every coalition; 0 where no journey's channels lie within it, the empty
    // coalition among them.
    let rate: Vec<f64> = converting
        .iter()
        .zip(touched)
        .map(|(&hits, &of)| {
            if of == 0 {
                0.0
            } else {
                hits as f64 / of as f64
            }
        })
        .collect();

    let factorial = factorials();
    let orders = factorial[count] as f64;
    // The Shapley weight of a coalition of k players without i.
    let weight: Vec<f64> = (0..count)
        .map(|k| (factorial[k] * factorial[count - 1 - k]) as f64 / orders)
        .collect();
    // credit_i = phi_i / v_rate(N) * conversions, and v_rate(N) = conversions / journeys.
    let scale = journeys as f64;

    (0..count)
        .map(|i| {
            let bit = 1usize << i;
            // Marginal gains summed per coalition size, then weighted once per size.
            let mut gains = [0f64; MAX_CHANNELS];
            for set in (0..rate.len()).filter(|set| set & bit == 0) {
                gains[set.count_ones() as usize] += rate[set | bit] - rate[set];
            }
            let phi: f64 = gains.iter().zip(&weight).map(|(gain, w)| gain * w).sum();
            phi * scale
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NAMES: [&str; 15] = [
        "web",
        "app",
        "mini_program",
        "store",
        "membership_desk",
        "call_center",
        "ads",
        "partner",
        "messaging",
        "other",
        "kiosk",
        "tv",
        "radio",
        "print",
        "outdoor",
    ];

    fn journey(touches: &[&'static str], converted: bool) -> Journey<'static> {
        Journey::new(touches.to_vec(), converted)
    }

    fn repeat(touches: &[&'static str], converted: bool, times: usize) -> Vec<Journey<'static>> {
        vec![journey(touches, converted); times]
    }

    fn credit(result: &Attribution, channel: &str) -> ByModel {
        match result.channel(channel) {
            Some(found) => found.credit,
            None => panic!("no channel {channel}"),
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * (1.0 + a.abs().max(b.abs()))
    }

    fn assert_close(a: f64, b: f64, what: &str) {
        assert!(close(a, b), "{what}: {a} != {b}");
    }

    /// A deterministic pseudo-random generator (Knuth's MMIX LCG).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            ((self.0 >> 33) % n as u64) as usize
        }
    }

    /// `count` journeys of 0 to 6 touches over `channels`, about half converting.
    fn random_journeys(
        rng: &mut Lcg,
        channels: &[&'static str],
        count: usize,
    ) -> Vec<Journey<'static>> {
        (0..count)
            .map(|_| {
                let len = rng.below(7);
                let touches = (0..len).map(|_| channels[rng.below(channels.len())]);
                Journey::new(touches.collect(), rng.below(2) == 0)
            })
            .collect()
    }

    /// The distinct channels of `journeys`, sorted.
    fn channels_of<'a>(journeys: &[Journey<'a>]) -> Vec<&'a str> {
        journeys
            .iter()
            .flat_map(|j| j.touches.iter().copied())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    }

    /// The Shapley value of the conversion-count game by definition, v evaluated by scanning
    /// the journeys. Channels in sorted order.
    fn brute_force_shapley(journeys: &[Journey<'_>]) -> Vec<(String, f64)> {
        let worth = |coalition: &BTreeSet<&str>| {
            journeys
                .iter()
                .filter(|j| j.converted && !j.touches.is_empty())
                .filter(|j| j.touches.iter().all(|t| coalition.contains(t)))
                .count() as f64
        };
        brute_force(&channels_of(journeys), &worth)
    }

    /// v_rate by scanning the journeys: the conversion rate of the journeys with touches whose
    /// channels all lie in `coalition`, 0 if there are none.
    fn rate_by_scan(journeys: &[Journey<'_>], coalition: &BTreeSet<&str>) -> f64 {
        let within: Vec<&Journey<'_>> = journeys
            .iter()
            .filter(|j| !j.touches.is_empty())
            .filter(|j| j.touches.iter().all(|t| coalition.contains(t)))
            .collect();
        if within.is_empty() {
            return 0.0;
        }
        within.iter().filter(|j| j.converted).count() as f64 / within.len() as f64
    }

    /// The conversion-rate Shapley credits by definition: the Shapley value of v_rate over all
    /// N! orders, times conversions / v_rate(N). Channels in sorted order.
    fn brute_force_rate_credits(journeys: &[Journey<'_>]) -> Vec<(String, f64)> {
        let channels = channels_of(journeys);
        let worth = |coalition: &BTreeSet<&str>| rate_by_scan(journeys, coalition);
        let everyone: BTreeSet<&str> = channels.iter().copied().collect();
        let overall = worth(&everyone);
        let conversions = journeys
            .iter()
            .filter(|j| j.converted && !j.touches.is_empty())
            .count() as f64;
        brute_force(&channels, &worth)
            .into_iter()
            .map(|(name, phi)| {
                let credit = if overall == 0.0 {
                    0.0
                } else {
                    phi / overall * conversions
                };
                (name, credit)
            })
            .collect()
    }

    /// The Shapley value by definition: each channel's marginal worth averaged over all N!
    /// orders in which the channels can join.
    fn brute_force(
        channels: &[&str],
        worth: &dyn Fn(&BTreeSet<&str>) -> f64,
    ) -> Vec<(String, f64)> {
        let mut totals = vec![0.0; channels.len()];
        let mut orders = 0u64;
        let mut order: Vec<usize> = (0..channels.len()).collect();
        permutations(&mut order, 0, &mut |order| {
            orders += 1;
            let mut coalition = BTreeSet::new();
            let mut before = 0.0;
            for &player in order {
                coalition.insert(channels[player]);
                let after = worth(&coalition);
                totals[player] += after - before;
                before = after;
            }
        });
        channels
            .iter()
            .zip(totals)
            .map(|(name, total)| (name.to_string(), total / orders as f64))
            .collect()
    }

    fn permutations(items: &mut [usize], from: usize, visit: &mut dyn FnMut(&[usize])) {
        if from == items.len() {
            visit(items);
            return;
        }
        for i in from..items.len() {
            items.swap(from, i);
            permutations(items, from + 1, visit);
            items.swap(from, i);
        }
    }

    /// The closed form of this game's Shapley value: each converting journey gives
    /// 1 / (its distinct channels) to each of its distinct channels.
    fn closed_form_shapley(journeys: &[Journey<'_>], channel: &str) -> f64 {
        journeys
            .iter()
            .filter(|j| j.converted)
            .map(|j| j.touches.iter().copied().collect::<BTreeSet<&str>>())
            .filter(|set| set.contains(channel))
            .map(|set| 1.0 / set.len() as f64)
            .sum()
    }

    fn attribute_ok(journeys: &[Journey<'_>]) -> Attribution {
        match attribute(journeys) {
            Ok(result) => result,
            Err(error) => panic!("{error}"),
        }
    }

    #[test]
    fn two_channels_by_hand() {
        // v({A}) = 3, v({B}) = 1, v({A, B}) = 3 + 1 + 2 = 6.
        // phi_A = 1/2 (v(A) - 0) + 1/2 (v(AB) - v(B)) = 3/2 + 5/2 = 4; phi_B = 1/2 + 3/2 = 2.
        let mut journeys = repeat(&["a"], true, 3);
        journeys.extend(repeat(&["b"], true, 1));
        journeys.extend(repeat(&["a", "b"], true, 2));
        journeys.extend(repeat(&["b", "a", "b"], false, 5));
        let result = attribute_ok(&journeys);
        assert_eq!(credit(&result, "a").shapley, 4.0);
        assert_eq!(credit(&result, "b").shapley, 2.0);
        assert_eq!(result.conversions, 6);
        assert_eq!(result.journeys, 11);
    }

    #[test]
    fn three_channels_by_hand() {
        // Converting journeys per channel set: {A}: 2, {A,B}: 3, {B,C}: 1, {A,B,C}: 6.
        // v: {} 0, A 2, B 0, C 0, AB 5, AC 2, BC 1, ABC 12.
        // Weights for N = 3: |S| = 0 -> 1/3, |S| = 1 -> 1/6, |S| = 2 -> 1/3.
        // phi_A = 1/3 (2 - 0) + 1/6 (5 - 0) + 1/6 (2 - 0) + 1/3 (12 - 1) = (4+5+2+22)/6 = 5.5
        // phi_B = 1/3 (0 - 0) + 1/6 (5 - 2) + 1/6 (1 - 0) + 1/3 (12 - 2) = (0+3+1+20)/6 = 4
        // phi_C = 1/3 (0 - 0) + 1/6 (2 - 2) + 1/6 (1 - 0) + 1/3 (12 - 5) = (0+0+1+14)/6 = 2.5
        // Sum 12 = v(ABC). Touch order, repetition and non-converting journeys do not matter.
        let mut journeys = repeat(&["a"], true, 2);
        journeys.extend(repeat(&["b", "a", "a"], true, 3));
        journeys.extend(repeat(&["c", "b"], true, 1));
        journeys.extend(repeat(&["c", "a", "b", "c"], true, 6));
        journeys.extend(repeat(&["c"], false, 4));
        journeys.extend(repeat(&["a", "c"], false, 7));
        let result = attribute_ok(&journeys);
        assert_eq!(credit(&result, "a").shapley, 5.5);
        assert_eq!(credit(&result, "b").shapley, 4.0);
        assert_eq!(credit(&result, "c").shapley, 2.5);
        assert_eq!(result.conversions, 12);
    }

    #[test]
    fn rate_two_channels_by_hand() {
        // Journeys per channel set: {A} 10, 2 converting; {B} 10, 1 converting; {A, B} 10, 6
        // converting. v_rate({A}) = 2/10, v_rate({B}) = 1/10, v_rate({A, B}) = 9/30 = 3/10.
        // phi_A = 1/2 (0.2 - 0) + 1/2 (0.3 - 0.1) = 0.2
        // phi_B = 1/2 (0.1 - 0) + 1/2 (0.3 - 0.2) = 0.1
        // Scaled to the 9 conversions: phi / 0.3 * 9 = 30 phi, so A 6 and B 3.
        // The count game instead: v = 2, 1, 9, phi_A = 1/2 (2) + 1/2 (8) = 5, phi_B = 4.
        let mut journeys = repeat(&["a"], true, 2);
        journeys.extend(repeat(&["a"], false, 8));
        journeys.extend(repeat(&["b"], true, 1));
        journeys.extend(repeat(&["b", "b"], false, 9));
        journeys.extend(repeat(&["a", "b"], true, 6));
        journeys.extend(repeat(&["b", "a", "a"], false, 4));
        journeys.extend(repeat(&[], false, 3));
        let result = attribute_ok(&journeys);
        assert_eq!(result.conversions, 9);
        assert_efficient(&result);
        let (a, b) = (credit(&result, "a"), credit(&result, "b"));
        assert_close(a.shapley_rate, 6.0, "a");
        assert_close(b.shapley_rate, 3.0, "b");
        assert_eq!(a.shapley, 5.0);
        assert_eq!(b.shapley, 4.0);
        let a_share = match result.channel("a") {
            Some(found) => found.share.shapley_rate,
            None => panic!("no a"),
        };
        assert_close(a_share, 2.0 / 3.0, "a share");

        // Ten more journeys through A alone, none converting: v_rate({A}) = 2/20 = 0.1,
        // v_rate({A, B}) = 9/40. phi_A = 1/2 (0.1) + 1/2 (9/40 - 0.1) = 0.1125, and
        // phi_B = 1/2 (0.1) + 1/2 (9/40 - 0.1) = 0.1125; credits phi / (9/40) * 9 = 40 phi,
        // 4.5 each. A loses credit to B; the count game does not move.
        journeys.extend(repeat(&["a"], false, 10));
        let more = attribute_ok(&journeys);
        assert_eq!(more.conversions, 9);
        assert_efficient(&more);
        let (a, b) = (credit(&more, "a"), credit(&more, "b"));
        assert_close(a.shapley_rate, 4.5, "a after");
        assert_close(b.shapley_rate, 4.5, "b after");
        assert_eq!(a.shapley, 5.0);
        assert_eq!(b.shapley, 4.0);
    }

    #[test]
    fn rate_credit_is_negative_for_a_channel_that_lowers_the_rate() {
        // {A} 10 journeys, 5 converting; {A, C} 10, none; {C} 5, none.
        // v_rate({A}) = 1/2, v_rate({C}) = 0, v_rate({A, C}) = 5/25 = 1/5.
        // phi_A = 1/2 (1/2 - 0) + 1/2 (1/5 - 0) = 0.35
        // phi_C = 1/2 (0 - 0) + 1/2 (1/5 - 1/2) = -0.15
        // Scaled to the 5 conversions: phi / (1/5) * 5 = 25 phi, so A 8.75 and C -3.75.
        let mut journeys = repeat(&["a"], true, 5);
        journeys.extend(repeat(&["a"], false, 5));
        journeys.extend(repeat(&["a", "c"], false, 10));
        journeys.extend(repeat(&["c"], false, 5));
        let result = attribute_ok(&journeys);
        assert_efficient(&result);
        let (a, c) = (credit(&result, "a"), credit(&result, "c"));
        assert_close(a.shapley_rate, 8.75, "a");
        assert_close(c.shapley_rate, -3.75, "c");
        assert_eq!(a.shapley, 5.0);
        assert_eq!(c.shapley, 0.0);
        let c_share = match result.channel("c") {
            Some(found) => found.share.shapley_rate,
            None => panic!("no c"),
        };
        assert_close(c_share, -0.75, "c share");
    }

    #[test]
    fn rate_credit_drops_as_non_converting_journeys_pass_through_a_channel() {
        let mut rng = Lcg(23);
        let mut strict = 0;
        for _ in 0..40 {
            let mut journeys = random_journeys(&mut rng, &NAMES[..4], 40);
            for journey in &mut journeys {
                if rng.below(2) == 0 {
                    let at = rng.below(journey.touches.len() + 1);
                    journey.touches.insert(at, "x");
                }
            }
            let without_x = journeys
                .iter()
                .any(|j| j.converted && !j.touches.is_empty() && !j.touches.contains(&"x"));
            let mut before = credit(&attribute_ok(&journeys), "x");
            for _ in 0..4 {
                journeys.extend(repeat(&["x"], false, 3));
                journeys.push(journey(&["x", "x"], false));
                let result = attribute_ok(&journeys);
                assert_efficient(&result);
                let after = credit(&result, "x");
                assert_eq!(after.shapley, before.shapley);
                if without_x {
                    // v_rate of N without x is positive, and it gains weight against v_rate(N).
                    assert!(
                        after.shapley_rate < before.shapley_rate,
                        "{} then {}",
                        before.shapley_rate,
                        after.shapley_rate
                    );
                    strict += 1;
                } else {
                    assert!(after.shapley_rate <= before.shapley_rate + 1e-9);
                }
                before = after;
            }
        }
        assert!(strict > 100, "{strict}");
    }

    #[test]
    fn rate_credits_match_permutations_on_random_journeys() {
        let mut rng = Lcg(29);
        for round in 0..60 {
            let channels = &NAMES[..1 + round % 6];
            let count = 1 + rng.below(80);
            let journeys = random_journeys(&mut rng, channels, count);
            let result = attribute_ok(&journeys);
            assert_efficient(&result);
            let expected = brute_force_rate_credits(&journeys);
            assert_eq!(expected.len(), result.channels.len());
            for ((name, credit), got) in expected.iter().zip(&result.channels) {
                assert_eq!(name, &got.channel);
                assert_close(got.credit.shapley_rate, *credit, name);
            }
        }
    }

    #[test]
    fn rule_based_models_by_hand() {
        let journeys = vec![
            journey(&["web", "app", "web"], true),
            journey(&["store", "web"], true),
            journey(&["app"], false),
            journey(&[], true),
            journey(&[], false),
        ];
        let result = attribute_ok(&journeys);
        let names: Vec<&str> = result.channels.iter().map(|c| c.channel.as_str()).collect();
        assert_eq!(names, ["app", "store", "web"]);
        assert_eq!(result.journeys, 5);
        assert_eq!(result.conversions, 2);
        assert_eq!(result.empty_journeys, 2);
        assert_eq!(result.unattributed_conversions, 1);

        let web = credit(&result, "web");
        assert_eq!(web.last_touch, 2.0);
        assert_eq!(web.first_touch, 1.0);
        assert_close(web.linear, 2.0 / 3.0 + 0.5, "web linear");
        assert_eq!(web.shapley, 1.0);

        let app = credit(&result, "app");
        assert_eq!(app.last_touch, 0.0);
        assert_eq!(app.first_touch, 0.0);
        assert_close(app.linear, 1.0 / 3.0, "app linear");
        assert_eq!(app.shapley, 0.5);

        let store = credit(&result, "store");
        assert_eq!(store.last_touch, 0.0);
        assert_eq!(store.first_touch, 1.0);
        assert_close(store.linear, 0.5, "store linear");
        assert_eq!(store.shapley, 0.5);

        let web_share = match result.channel("web") {
            Some(web) => web.share,
            None => panic!("no web"),
        };
        assert_eq!(web_share.last_touch, 1.0);
        assert_eq!(web_share.first_touch, 0.5);
        assert_close(web_share.linear, 7.0 / 12.0, "web linear share");
        assert_eq!(web_share.shapley, 0.5);
        assert!(result.channel("ads").is_none());

        // The rate game over {app, store, web} (empty journeys left out): sets {app, web} 1 of 1
        // converting, {store, web} 1 of 1, {app} 0 of 1. v_rate: app 0/1, store and web 0 (no
        // journey within), {app, store} 0/1, {app, web} 1/2, {store, web} 1/1, all 2/3.
        // phi_app = 1/3 (0 - 0) + 1/6 (0 - 0) + 1/6 (1/2 - 0) + 1/3 (2/3 - 1) = -1/36
        // phi_store = 1/3 (0 - 0) + 1/6 (0 - 0) + 1/6 (1 - 0) + 1/3 (2/3 - 1/2) = 8/36
        // phi_web = 1/3 (0 - 0) + 1/6 (1/2 - 0) + 1/6 (1 - 0) + 1/3 (2/3 - 0) = 17/36
        // Credits phi / (2/3) * 2 conversions = 3 phi: -1/12, 2/3, 17/12.
        assert_close(app.shapley_rate, -1.0 / 12.0, "app rate");
        assert_close(store.shapley_rate, 2.0 / 3.0, "store rate");
        assert_close(web.shapley_rate, 17.0 / 12.0, "web rate");
        assert_close(web_share.shapley_rate, 17.0 / 24.0, "web rate share");
    }

    /// Each model hands out exactly the conversions, and so the shares add up to 1.
    fn assert_efficient(result: &Attribution) {
        let conversions = result.conversions as f64;
        let sum = |f: fn(&ByModel) -> f64| result.channels.iter().map(|c| f(&c.credit)).sum();
        assert_eq!(sum(|m| m.last_touch), conversions);
        assert_eq!(sum(|m| m.first_touch), conversions);
        assert_close(sum(|m| m.linear), conversions, "linear sum");
        assert_close(sum(|m| m.shapley), conversions, "shapley sum");
        assert_close(sum(|m| m.shapley_rate), conversions, "shapley_rate sum");
        if result.conversions > 0 {
            let share: f64 = result.channels.iter().map(|c| c.share.shapley).sum();
            assert_close(share, 1.0, "shapley shares");
            let share: f64 = result.channels.iter().map(|c| c.share.shapley_rate).sum();
            assert_close(share, 1.0, "shapley_rate shares");
        } else {
            assert!(result.channels.iter().all(|c| c.credit.shapley_rate == 0.0));
        }
    }

    #[test]
    fn shapley_matches_permutations_on_random_journeys() {
        let mut rng = Lcg(7);
        for round in 0..60 {
            let channels = &NAMES[..1 + round % 6];
            let count = 1 + rng.below(80);
            let journeys = random_journeys(&mut rng, channels, count);
            let result = attribute_ok(&journeys);
            assert_efficient(&result);
            let expected = brute_force_shapley(&journeys);
            assert_eq!(expected.len(), result.channels.len());
            for ((name, phi), got) in expected.iter().zip(&result.channels) {
                assert_eq!(name, &got.channel);
                assert_close(got.credit.shapley, *phi, name);
            }
        }
    }

    #[test]
    fn shapley_matches_closed_form_up_to_the_limit() {
        let mut rng = Lcg(11);
        for round in 0..24 {
            let channels = &NAMES[..1 + round % MAX_CHANNELS];
            let journeys = random_journeys(&mut rng, channels, 500);
            let result = attribute_ok(&journeys);
            assert_efficient(&result);
            for got in &result.channels {
                let expected = closed_form_shapley(&journeys, &got.channel);
                assert_close(got.credit.shapley, expected, &got.channel);
            }
        }
    }

    #[test]
    fn channels_always_together_get_equal_credit() {
        let mut rng = Lcg(13);
        for _ in 0..40 {
            let mut journeys = random_journeys(&mut rng, &NAMES[..4], 60);
            for journey in &mut journeys {
                if rng.below(3) == 0 {
                    let at = rng.below(journey.touches.len() + 1);
                    journey.touches.insert(at, "x");
                    let at = rng.below(journey.touches.len() + 1);
                    journey.touches.insert(at, "y");
                    journey.touches.push("x");
                }
            }
            let result = attribute_ok(&journeys);
            assert_efficient(&result);
            let (x, y) = (credit(&result, "x"), credit(&result, "y"));
            assert_eq!(x.shapley, y.shapley);
            assert_close(x.shapley_rate, y.shapley_rate, "x and y rate credit");
        }
    }

    #[test]
    fn channel_only_in_non_converting_journeys_gets_nothing_but_a_rate_penalty() {
        let mut rng = Lcg(17);
        let mut penalised = 0;
        for _ in 0..40 {
            let plain = random_journeys(&mut rng, &NAMES[..5], 60);
            let mut journeys = plain.clone();
            for journey in journeys.iter_mut().filter(|j| !j.converted) {
                let at = rng.below(journey.touches.len() + 1);
                journey.touches.insert(at, "ghost");
            }
            let result = attribute_ok(&journeys);
            assert_efficient(&result);
            let ghost = credit(&result, "ghost");
            assert_eq!(
                ghost,
                ByModel {
                    shapley_rate: ghost.shapley_rate,
                    ..ByModel::default()
                }
            );
            if result.conversions == 0 {
                assert_eq!(ghost.shapley_rate, 0.0);
                continue;
            }
            // Every coalition's conversion rate drops, or stays, when the ghost joins; with the
            // ghost joining all other channels it strictly drops.
            assert!(ghost.shapley_rate < 0.0, "{}", ghost.shapley_rate);
            penalised += 1;

            // The ghost's journeys leave the count game alone but change the rate game.
            let without = attribute_ok(&plain);
            let mut others = 0.0;
            for got in result.channels.iter().filter(|c| c.channel != "ghost") {
                let before = credit(&without, &got.channel);
                assert_eq!(got.credit.shapley, before.shapley);
                others += got.credit.shapley_rate;
            }
            assert_close(
                others,
                result.conversions as f64 - ghost.shapley_rate,
                "others' rate credit",
            );
            assert!(others > result.conversions as f64);
        }
        assert!(penalised > 30, "{penalised}");
    }

    #[test]
    fn order_of_journeys_does_not_matter() {
        let mut rng = Lcg(19);
        let journeys = random_journeys(&mut rng, &NAMES[..9], 400);
        let forward = attribute_ok(&journeys);
        let reversed: Vec<Journey<'_>> = journeys.iter().rev().cloned().collect();
        let backward = attribute_ok(&reversed);
        assert_eq!(forward.conversions, backward.conversions);
        for (f, b) in forward.channels.iter().zip(&backward.channels) {
            assert_eq!(f.channel, b.channel);
            assert_eq!(f.credit.last_touch, b.credit.last_touch);
            assert_eq!(f.credit.first_touch, b.credit.first_touch);
            assert_close(f.credit.linear, b.credit.linear, &f.channel);
            assert_eq!(f.credit.shapley, b.credit.shapley);
            assert_eq!(f.credit.shapley_rate, b.credit.shapley_rate);
        }
    }

    #[test]
    fn more_than_twelve_channels_is_an_error() {
        let twelve: Vec<Journey<'_>> = NAMES[..12].iter().map(|&c| journey(&[c], true)).collect();
        let result = attribute_ok(&twelve);
        assert_eq!(result.channels.len(), 12);
        assert_efficient(&result);
        for channel in &result.channels {
            assert_eq!(channel.credit.shapley, 1.0);
            // v_rate is 1 for every non-empty coalition: only joining the empty one counts.
            assert_close(channel.credit.shapley_rate, 1.0, &channel.channel);
        }

        let mut thirteen = twelve.clone();
        thirteen.push(journey(&[NAMES[12]], false));
        let error = attribute(&thirteen);
        assert_eq!(
            error,
            Err(AttributionError::TooManyChannels {
                count: 13,
                limit: 12
            })
        );
        if let Err(error) = error {
            let message = error.to_string();
            assert!(
                message.contains("13") && message.contains("12"),
                "{message}"
            );
        }

        let fifteen = vec![journey(&NAMES, true)];
        assert_eq!(
            attribute(&fifteen),
            Err(AttributionError::TooManyChannels {
                count: 15,
                limit: MAX_CHANNELS
            })
        );
    }

    #[test]
    fn names_alike_in_their_first_bytes_stay_apart() {
        let alike = [
            "abcdefgh1",
            "abcdefgh2",
            "abcdefgh",
            "abcdefg",
            "abcdefg\u{f}",
            "abcdefg\0",
            "a1cb",
            "a2cb",
            "",
        ];
        let journeys: Vec<Journey<'_>> = alike
            .iter()
            .enumerate()
            .flat_map(|(i, &name)| repeat(&[name], true, i + 1))
            .collect();
        let result = attribute_ok(&journeys);
        assert_eq!(result.channels.len(), alike.len());
        for (i, &name) in alike.iter().enumerate() {
            assert_eq!(credit(&result, name).last_touch, (i + 1) as f64, "{name:?}");
        }
    }

    #[test]
    fn empty_input_gives_zeros() {
        let result = attribute_ok(&[]);
        assert_eq!(result, Attribution::default());

        let journeys = vec![journey(&["web", "app"], false), journey(&[], true)];
        let result = attribute_ok(&journeys);
        assert_eq!(result.conversions, 0);
        assert_eq!(result.unattributed_conversions, 1);
        assert_eq!(result.channels.len(), 2);
        for channel in &result.channels {
            assert_eq!(channel.credit, ByModel::default());
            assert_eq!(channel.share, ByModel::default());
        }
    }
}
