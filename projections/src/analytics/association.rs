//! Product associations from order baskets: the itemsets bought together often (mined with
//! FP-growth) and the association rules they imply, free of IO.
//!
//! A *basket* is the set of distinct products of one order, each product a dense `u32` id the
//! caller maps from its SKUs; an id listed twice in one basket counts once. Over `n` baskets
//! (empty ones included):
//!
//! - the **support** of an itemset `X` is the share of baskets that contain every item of `X`,
//!   `count(X) / n`, a number in 0–1;
//! - the **confidence** of a rule `A → C` is the share of the baskets containing `A` that also
//!   contain `C`, `count(A ∪ C) / count(A)`, a number in 0–1;
//! - the **lift** of `A → C` is its confidence divided by the support of `C`, a ratio: 1 when
//!   `A` and `C` are bought independently of each other, above 1 when buying `A` makes `C` more
//!   likely, below 1 when less.
//!
//! [`frequent_itemsets`] finds every itemset whose support reaches a threshold, [`rules`] turns
//! those itemsets into rules, and [`bought_together`] picks the products most bought with one
//! product.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// A set of products and the number of baskets that contain all of them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Itemset {
    /// The product ids, in increasing order, without repeats.
    pub items: Vec<u32>,
    /// The number of baskets containing every product of `items`.
    pub count: u64,
}

impl Itemset {
    /// The itemset's support: the share (0–1) of `baskets` baskets that contain it.
    pub fn support(&self, baskets: u64) -> f64 {
        self.count as f64 / baskets as f64
    }
}

/// An association rule `antecedent → consequent`: baskets with every product of the
/// antecedent tend to hold the products of the consequent too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    /// The products already in the basket, in increasing order.
    pub antecedent: Vec<u32>,
    /// The products the rule predicts, in increasing order, disjoint from the antecedent.
    pub consequent: Vec<u32>,
    /// The number of baskets holding both the antecedent and the consequent.
    pub count: u64,
    /// The share (0–1) of all baskets holding both the antecedent and the consequent.
    pub support: f64,
    /// The share (0–1) of the baskets holding the antecedent that also hold the consequent.
    pub confidence: f64,
    /// The confidence divided by the consequent's support: a ratio, 1 under independence.
    pub lift: f64,
}

/// A parameter or an input that the functions of this module cannot work with.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum AssociationError {
    /// The minimum support is not a share of baskets in (0, 1].
    #[error("min_support must be a share of baskets in (0, 1], got {0}")]
    MinSupport(f64),
    /// The longest itemset asked for has no items.
    #[error("max_len must be at least 1, got {0}")]
    MaxLen(usize),
    /// The minimum confidence is not a share in [0, 1].
    #[error("min_confidence must be a share in [0, 1], got {0}")]
    MinConfidence(f64),
    /// An itemset is empty or does not list its items in strictly increasing order.
    #[error("itemset {0:?} must list at least one item, in strictly increasing order")]
    MalformedItemset(Vec<u32>),
    /// The same items are listed as two itemsets.
    #[error("itemset {0:?} is listed twice")]
    DuplicateItemset(Vec<u32>),
    /// An itemset's count is zero or exceeds the number of baskets.
    #[error("itemset {items:?} has count {count}, outside 1..={baskets} for {baskets} baskets")]
    CountOutOfRange {
        /// The itemset's items.
        items: Vec<u32>,
        /// Its count.
        count: u64,
        /// The number of baskets given.
        baskets: u64,
    },
    /// A subset of an itemset is not listed, so the rules it takes part in cannot be scored.
    #[error(
        "itemset {subset:?}, a subset of {itemset:?}, is missing: rules need the count of every \
         subset of each itemset, as frequent_itemsets returns them"
    )]
    MissingSubset {
        /// The missing subset.
        subset: Vec<u32>,
        /// The itemset it belongs to.
        itemset: Vec<u32>,
    },
    /// A subset is counted in fewer baskets than an itemset containing it.
    #[error("itemset {subset:?} has count {subset_count}, below the count {count} of its superset {itemset:?}")]
    SubsetCountBelow {
        /// The subset.
        subset: Vec<u32>,
        /// Its count.
        subset_count: u64,
        /// The itemset containing it.
        itemset: Vec<u32>,
        /// The itemset's count.
        count: u64,
    },
    /// An itemset has too many items to enumerate the rules it splits into.
    #[error("itemset of {0} items splits into too many rules (at most {MAX_RULE_ITEMS} items)")]
    TooLong(usize),
}

/// The most items an itemset given to [`rules`] may have: it splits into `2^len - 2` rules.
pub const MAX_RULE_ITEMS: usize = 32;

/// Every itemset of at most `max_len` products whose support (the share of `baskets`
/// containing it, 0–1) is at least `min_support`, with its count, by FP-growth (Han, Pei and
/// Yin, 2000).
///
/// A product listed twice in one basket counts once; empty baskets count in the denominator.
/// An itemset is kept when `count as f64 / baskets.len() as f64 >= min_support`. The result is
/// ordered by length, then by items; it holds every subset of each itemset it holds, as
/// [`rules`] needs. No baskets yield no itemsets.
pub fn frequent_itemsets(
    baskets: &[Vec<u32>],
    min_support: f64,
    max_len: usize,
) -> Result<Vec<Itemset>, AssociationError> {
    if !(min_support > 0.0 && min_support <= 1.0) {
        return Err(AssociationError::MinSupport(min_support));
    }
    if max_len == 0 {
        return Err(AssociationError::MaxLen(max_len));
    }
    if baskets.is_empty() {
        return Ok(Vec::new());
    }
    let min_count = min_count(min_support, baskets.len() as u64);

    // The distinct products of each basket.
    let total: usize = baskets.iter().map(Vec::len).sum();
    let mut distinct = Paths::with_capacity(baskets.len(), total);
    let mut scratch = Vec::new();
    for basket in baskets {
        scratch.clear();
        scratch.extend_from_slice(basket);
        scratch.sort_unstable();
        scratch.dedup();
        distinct.push(&scratch, 1);
    }

    // Count every product, keep the frequent ones and rank them by descending count (ties by
    // id), the order in which the tree lays them out from the root.
    let mut all = distinct.items.clone();
    all.sort_unstable();
    let mut frequent: Vec<(u32, u64)> = Vec::new();
    for run in all.chunk_by(|a, b| a == b) {
        let count = run.len() as u64;
        if count >= min_count {
            frequent.push((run[0], count));
        }
    }
    drop(all);
    frequent.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let products: Vec<u32> = frequent.iter().map(|&(id, _)| id).collect();
    let mut rank_of: Vec<(u32, u32)> = products
        .iter()
        .enumerate()
        .map(|(rank, &id)| (id, rank as u32))
        .collect();
    rank_of.sort_unstable();

    // Each basket as the increasing ranks of its frequent products.
    let mut paths = Paths::with_capacity(baskets.len(), distinct.items.len());
    for k in 0..distinct.len() {
        scratch.clear();
        for &id in distinct.path(k) {
            if let Ok(at) = rank_of.binary_search_by_key(&id, |&(id, _)| id) {
                scratch.push(rank_of[at].1);
            }
        }
        scratch.sort_unstable();
        paths.push(&scratch, 1);
    }
    drop(distinct);
    let tree = FpTree::build(products, &paths);
    drop(paths);

    let mut miner = Miner {
        min_count,
        max_len,
        found: Vec::new(),
    };
    miner.mine(&tree, &mut Vec::with_capacity(max_len.min(64)));
    let mut found = miner.found;
    found.sort_unstable_by(|a, b| {
        a.items
            .len()
            .cmp(&b.items.len())
            .then_with(|| a.items.cmp(&b.items))
    });
    Ok(found)
}

/// The association rules among `itemsets` whose confidence is at least `min_confidence`
/// (a share, 0–1), over `baskets` baskets in all.
///
/// Every itemset of two or more products splits into one rule per non-empty proper subset as
/// the antecedent, the rest as the consequent. The counts of both sides are looked up in
/// `itemsets`, which must therefore hold every subset of each itemset with its count, as
/// [`frequent_itemsets`] returns them. Rules come best first: by lift, then confidence, then
/// count, all descending, then by the shorter antecedent, then by antecedent and consequent
/// items.
pub fn rules(
    itemsets: &[Itemset],
    baskets: u64,
    min_confidence: f64,
) -> Result<Vec<Rule>, AssociationError> {
    if !(0.0..=1.0).contains(&min_confidence) {
        return Err(AssociationError::MinConfidence(min_confidence));
    }
    let mut counts: HashMap<&[u32], u64> = HashMap::with_capacity(itemsets.len());
    for itemset in itemsets {
        let items = itemset.items.as_slice();
        if items.is_empty() || items.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(AssociationError::MalformedItemset(items.to_vec()));
        }
        if itemset.count == 0 || itemset.count > baskets {
            return Err(AssociationError::CountOutOfRange {
                items: items.to_vec(),
                count: itemset.count,
                baskets,
            });
        }
        if counts.insert(items, itemset.count).is_some() {
            return Err(AssociationError::DuplicateItemset(items.to_vec()));
        }
    }

    let subset_count = |subset: &[u32], itemset: &Itemset| match counts.get(subset) {
        None => Err(AssociationError::MissingSubset {
            subset: subset.to_vec(),
            itemset: itemset.items.clone(),
        }),
        Some(&count) if count < itemset.count => Err(AssociationError::SubsetCountBelow {
            subset: subset.to_vec(),
            subset_count: count,
            itemset: itemset.items.clone(),
            count: itemset.count,
        }),
        Some(&count) => Ok(count),
    };

    let total = baskets as f64;
    let mut found = Vec::new();
    let mut antecedent = Vec::new();
    let mut consequent = Vec::new();
    for itemset in itemsets {
        let len = itemset.items.len();
        if len < 2 {
            continue;
        }
        if len > MAX_RULE_ITEMS {
            return Err(AssociationError::TooLong(len));
        }
        let count = itemset.count as f64;
        let all = (1u64 << len) - 1;
        for mask in 1..all {
            antecedent.clear();
            consequent.clear();
            for (bit, &item) in itemset.items.iter().enumerate() {
                if mask & (1 << bit) != 0 {
                    antecedent.push(item);
                } else {
                    consequent.push(item);
                }
            }
            let antecedent_count = subset_count(&antecedent, itemset)? as f64;
            let consequent_count = subset_count(&consequent, itemset)? as f64;
            let confidence = count / antecedent_count;
            if confidence < min_confidence {
                continue;
            }
            found.push(Rule {
                antecedent: antecedent.clone(),
                consequent: consequent.clone(),
                count: itemset.count,
                support: count / total,
                confidence,
                lift: confidence / (consequent_count / total),
            });
        }
    }
    found.sort_unstable_by(rule_order);
    Ok(found)
}

/// The products most bought with `item`: the rules `item → p` of a single product `p`, best
/// first (in the order of [`rules`]), at most `limit` of them.
pub fn bought_together(rules: &[Rule], item: u32, limit: usize) -> Vec<&Rule> {
    let mut found: Vec<&Rule> = rules
        .iter()
        .filter(|rule| rule.antecedent == [item] && rule.consequent.len() == 1)
        .collect();
    found.sort_by(|a, b| rule_order(a, b));
    found.truncate(limit);
    found
}

/// Best rule first: lift, confidence and count descending, then the shorter antecedent, then
/// antecedent and consequent items ascending.
fn rule_order(a: &Rule, b: &Rule) -> Ordering {
    b.lift
        .total_cmp(&a.lift)
        .then_with(|| b.confidence.total_cmp(&a.confidence))
        .then_with(|| b.count.cmp(&a.count))
        .then_with(|| a.antecedent.len().cmp(&b.antecedent.len()))
        .then_with(|| a.antecedent.cmp(&b.antecedent))
        .then_with(|| a.consequent.cmp(&b.consequent))
}

/// The smallest count `c >= 1` with `c as f64 / baskets as f64 >= min_support`, for
/// `min_support` in (0, 1] and `baskets >= 1`: the same test as the documented one, without
/// the rounding of `min_support * baskets`.
fn min_count(min_support: f64, baskets: u64) -> u64 {
    let total = baskets as f64;
    let mut count = ((min_support * total).ceil() as u64).clamp(1, baskets);
    while count > 1 && (count - 1) as f64 / total >= min_support {
        count -= 1;
    }
    while count < baskets && (count as f64 / total) < min_support {
        count += 1;
    }
    count
}

/// Weighted transactions stored flat: the items of transaction `k` are
/// `items[starts[k]..starts[k + 1]]`.
struct Paths {
    items: Vec<u32>,
    starts: Vec<usize>,
    weights: Vec<u64>,
}

impl Paths {
    fn with_capacity(paths: usize, items: usize) -> Self {
        let mut starts = Vec::with_capacity(paths + 1);
        starts.push(0);
        Paths {
            items: Vec::with_capacity(items),
            starts,
            weights: Vec::with_capacity(paths),
        }
    }

    fn len(&self) -> usize {
        self.weights.len()
    }

    fn path(&self, k: usize) -> &[u32] {
        &self.items[self.starts[k]..self.starts[k + 1]]
    }

    fn push(&mut self, items: &[u32], weight: u64) {
        self.items.extend_from_slice(items);
        self.close(weight);
    }

    /// Ends the transaction made of the items pushed since the last one ended.
    fn close(&mut self, weight: u64) {
        self.starts.push(self.items.len());
        self.weights.push(weight);
    }
}

/// The indices of `paths` (runs of items below `items`) in lexicographic order of their items.
///
/// Each path is first keyed by as many of its leading items as fit in a `u64`, an item `i`
/// stored as `i + 1` and a missing one as 0, so that keys order like the paths' prefixes;
/// only runs of equal keys that hold longer paths are then compared item by item.
fn sorted_order(paths: &Paths, items: usize) -> Vec<usize> {
    let bits = (u64::BITS - (items as u64).leading_zeros()).max(1);
    let per_key = (u64::BITS / bits) as usize;
    let mut keyed: Vec<(u64, usize)> = (0..paths.len())
        .map(|k| {
            let path = paths.path(k);
            let key = (0..per_key).fold(0u64, |key, at| {
                let field = path.get(at).map_or(0, |&item| u64::from(item) + 1);
                (key << bits) | field
            });
            (key, k)
        })
        .collect();
    keyed.sort_unstable();
    let mut order: Vec<usize> = keyed.iter().map(|&(_, k)| k).collect();
    let last_field = (1u64 << bits) - 1;
    let mut start = 0;
    while start < keyed.len() {
        let key = keyed[start].0;
        let end = start
            + keyed[start..]
                .iter()
                .take_while(|&&(other, _)| other == key)
                .count();
        if end - start > 1 && key & last_field != 0 {
            order[start..end].sort_unstable_by(|&a, &b| paths.path(a).cmp(paths.path(b)));
        }
        start = end;
    }
    order
}

/// The root's index in an [`FpTree`]'s node arrays.
const ROOT: usize = 0;

/// A frequent-pattern tree: transactions sharing a prefix share the nodes of that prefix.
///
/// Items are local ranks `0..products.len()`; every path from the root visits them in
/// increasing rank. Nodes live in parallel arrays (node 0 is the root), and the header groups
/// the nodes of each item: `header_nodes[header_starts[i]..header_starts[i + 1]]`.
struct FpTree {
    /// The product id of each local item.
    products: Vec<u32>,
    /// The total count of each local item over its nodes.
    item_counts: Vec<u64>,
    node_items: Vec<u32>,
    node_counts: Vec<u64>,
    node_parents: Vec<usize>,
    header_starts: Vec<usize>,
    header_nodes: Vec<usize>,
}

impl FpTree {
    /// The tree of `paths`, each a strictly increasing run of local items below
    /// `products.len()`.
    ///
    /// The transactions are sorted first, so that each one shares with the tree exactly its
    /// common prefix with the one before it: inserting needs no search among children.
    fn build(products: Vec<u32>, paths: &Paths) -> FpTree {
        let order = sorted_order(paths, products.len());

        let mut node_items = vec![u32::MAX];
        let mut node_counts = vec![0u64];
        let mut node_parents = vec![ROOT];
        let mut stack: Vec<usize> = Vec::new();
        let mut previous: &[u32] = &[];
        for k in order {
            let path = paths.path(k);
            let weight = paths.weights[k];
            let shared = path
                .iter()
                .zip(previous)
                .take_while(|(a, b)| a == b)
                .count();
            stack.truncate(shared);
            for &node in &stack {
                node_counts[node] += weight;
            }
            for &item in &path[shared..] {
                node_parents.push(stack.last().copied().unwrap_or(ROOT));
                node_items.push(item);
                node_counts.push(weight);
                stack.push(node_items.len() - 1);
            }
            previous = path;
        }

        let items = products.len();
        let mut item_counts = vec![0u64; items];
        let mut header_starts = vec![0usize; items + 1];
        for node in 1..node_items.len() {
            let item = node_items[node] as usize;
            item_counts[item] += node_counts[node];
            header_starts[item + 1] += 1;
        }
        for item in 0..items {
            header_starts[item + 1] += header_starts[item];
        }
        let mut next = header_starts.clone();
        let mut header_nodes = vec![ROOT; node_items.len() - 1];
        for (node, &item) in node_items.iter().enumerate().skip(1) {
            let at = &mut next[item as usize];
            header_nodes[*at] = node;
            *at += 1;
        }
        FpTree {
            products,
            item_counts,
            node_items,
            node_counts,
            node_parents,
            header_starts,
            header_nodes,
        }
    }

    fn nodes_of(&self, item: usize) -> &[usize] {
        &self.header_nodes[self.header_starts[item]..self.header_starts[item + 1]]
    }

    /// The counts, in the conditional pattern base of `item`, of every item ranked before it:
    /// how many of the transactions containing `item` also contain each.
    fn prefix_counts(&self, item: usize) -> Vec<u64> {
        let mut counts = vec![0u64; item];
        for &node in self.nodes_of(item) {
            let weight = self.node_counts[node];
            let mut up = self.node_parents[node];
            while up != ROOT {
                counts[self.node_items[up] as usize] += weight;
                up = self.node_parents[up];
            }
        }
        counts
    }

    /// The conditional tree of `item`: its prefix paths, weighted by its count on each path
    /// and restricted to the items whose `counts` (from [`FpTree::prefix_counts`]) reach
    /// `min_count`. `None` when no item does.
    fn conditional(&self, item: usize, counts: &[u64], min_count: u64) -> Option<FpTree> {
        const DROPPED: u32 = u32::MAX;
        let mut local = vec![DROPPED; item];
        let mut products = Vec::new();
        for (rank, &count) in counts.iter().enumerate() {
            if count >= min_count {
                local[rank] = products.len() as u32;
                products.push(self.products[rank]);
            }
        }
        if products.is_empty() {
            return None;
        }
        let nodes = self.nodes_of(item);
        let mut paths = Paths::with_capacity(nodes.len(), 0);
        for &node in nodes {
            let start = paths.items.len();
            let mut up = self.node_parents[node];
            while up != ROOT {
                let rank = local[self.node_items[up] as usize];
                if rank != DROPPED {
                    paths.items.push(rank);
                }
                up = self.node_parents[up];
            }
            if paths.items.len() > start {
                paths.items[start..].reverse();
                paths.close(self.node_counts[node]);
            }
        }
        Some(FpTree::build(products, &paths))
    }
}

/// The recursive FP-growth step and what it has found so far.
struct Miner {
    min_count: u64,
    max_len: usize,
    found: Vec<Itemset>,
}

impl Miner {
    /// Finds, for each item of `tree`, the itemset of that item and `suffix`, then, while
    /// itemsets may grow, the frequent itemsets of its conditional tree.
    ///
    /// Every item of `tree` is frequent together with `suffix`, which holds product ids.
    fn mine(&mut self, tree: &FpTree, suffix: &mut Vec<u32>) {
        for item in 0..tree.products.len() {
            suffix.push(tree.products[item]);
            self.emit(suffix, tree.item_counts[item]);
            if suffix.len() < self.max_len {
                let counts = tree.prefix_counts(item);
                if suffix.len() + 1 == self.max_len {
                    // The next itemsets are the last ones: their counts suffice, no tree.
                    for (rank, &count) in counts.iter().enumerate() {
                        if count >= self.min_count {
                            suffix.push(tree.products[rank]);
                            self.emit(suffix, count);
                            suffix.pop();
                        }
                    }
                } else if let Some(conditional) = tree.conditional(item, &counts, self.min_count) {
                    self.mine(&conditional, suffix);
                }
            }
            suffix.pop();
        }
    }

    fn emit(&mut self, items: &[u32], count: u64) {
        let mut items = items.to_vec();
        items.sort_unstable();
        self.found.push(Itemset { items, count });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// A small deterministic pseudo-random generator (Knuth's MMIX LCG).
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A number below `n`, small ones more likely.
        fn skewed(&mut self, n: u64) -> u64 {
            let bound = self.below(n) + 1;
            self.below(bound)
        }

        fn unit(&mut self) -> f64 {
            self.next() as f64 / (1u64 << 31) as f64
        }
    }

    fn set(items: &[u32], count: u64) -> Itemset {
        Itemset {
            items: items.to_vec(),
            count,
        }
    }

    /// The baskets of the FP-growth example in Han, Kamber and Pei, "Data Mining: Concepts
    /// and Techniques", 3rd ed., table 6.1, product `k` standing for `Ik`.
    fn textbook() -> Vec<Vec<u32>> {
        vec![
            vec![1, 2, 5], // T100
            vec![2, 4],    // T200
            vec![2, 3],    // T300
            vec![1, 2, 4], // T400
            vec![1, 3],    // T500
            vec![2, 3],    // T600
            vec![1, 3],    // T700
            vec![1, 2, 3, 5],
            vec![1, 2, 3], // T900
        ]
    }

    /// How many baskets contain every item of `items`.
    fn count_in(baskets: &[Vec<u32>], items: &[u32]) -> u64 {
        baskets
            .iter()
            .filter(|basket| items.iter().all(|item| basket.contains(item)))
            .count() as u64
    }

    /// Every itemset of at most `max_len` items, counted directly, kept when its support
    /// reaches `min_support`; ordered like `frequent_itemsets`.
    fn brute_force(baskets: &[Vec<u32>], min_support: f64, max_len: usize) -> Vec<Itemset> {
        let universe: Vec<u32> = baskets
            .iter()
            .flatten()
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert!(universe.len() < 20, "brute force over too many products");
        // Each basket as the set of its products' positions in `universe`.
        let masks: Vec<u32> = baskets
            .iter()
            .map(|basket| {
                basket.iter().fold(0, |mask, item| {
                    mask | 1 << universe.binary_search(item).unwrap()
                })
            })
            .collect();
        let total = baskets.len() as f64;
        let mut found = Vec::new();
        for chosen in 1u32..1 << universe.len() {
            if chosen.count_ones() as usize > max_len {
                continue;
            }
            let count = masks
                .iter()
                .filter(|&&mask| mask & chosen == chosen)
                .count() as u64;
            if count > 0 && count as f64 / total >= min_support {
                let items: Vec<u32> = (0..universe.len())
                    .filter(|&bit| chosen & 1 << bit != 0)
                    .map(|bit| universe[bit])
                    .collect();
                found.push(set(&items, count));
            }
        }
        found.sort_by(|a, b| {
            a.items
                .len()
                .cmp(&b.items.len())
                .then_with(|| a.items.cmp(&b.items))
        });
        found
    }

    /// Random baskets over a handful of products with skewed popularity, sparse ids,
    /// repeats within a basket and some empty baskets.
    fn random_baskets(rng: &mut Lcg) -> Vec<Vec<u32>> {
        const IDS: [u32; 10] = [0, 1, 2, 7, 8, 40, 1000, 65_536, 3_000_000_000, u32::MAX];
        let products = 1 + rng.below(IDS.len() as u64);
        let count = rng.below(60);
        (0..count)
            .map(|_| {
                let size = rng.below(8);
                (0..size)
                    .map(|_| IDS[rng.skewed(products) as usize])
                    .collect()
            })
            .collect()
    }

    fn assert_close(actual: f64, expected: f64, what: &str) {
        assert!(
            (actual - expected).abs() <= 1e-12 * expected.abs().max(1.0),
            "{what}: {actual} != {expected}"
        );
    }

    #[test]
    fn textbook_frequent_itemsets() {
        // Minimum support count 2 of 9 baskets, as in the book.
        let found = frequent_itemsets(&textbook(), 2.0 / 9.0, 10).unwrap();
        let expected = vec![
            set(&[1], 6),
            set(&[2], 7),
            set(&[3], 6),
            set(&[4], 2),
            set(&[5], 2),
            set(&[1, 2], 4),
            set(&[1, 3], 4),
            set(&[1, 5], 2),
            set(&[2, 3], 4),
            set(&[2, 4], 2),
            set(&[2, 5], 2),
            set(&[1, 2, 3], 2),
            set(&[1, 2, 5], 2),
        ];
        assert_eq!(found, expected);
        assert_close(found[5].support(9), 4.0 / 9.0, "support of {I1, I2}");

        // max_len cuts the triples; a support just above 2/9 keeps only counts of 3 and more.
        assert_eq!(
            frequent_itemsets(&textbook(), 2.0 / 9.0, 2).unwrap(),
            expected[..11].to_vec()
        );
        assert_eq!(
            frequent_itemsets(&textbook(), 0.23, 10).unwrap(),
            vec![
                set(&[1], 6),
                set(&[2], 7),
                set(&[3], 6),
                set(&[1, 2], 4),
                set(&[1, 3], 4),
                set(&[2, 3], 4),
            ]
        );
    }

    #[test]
    fn textbook_rules() {
        let baskets = textbook();
        let itemsets = frequent_itemsets(&baskets, 2.0 / 9.0, 10).unwrap();
        // The book's 70% confidence threshold. Worked out by hand (n = 9):
        //   I5 → {I1, I2}: conf 2/2 = 1, lift 1 / (4/9) = 2.25
        //   I5 → I1:       conf 2/2 = 1, lift 1 / (6/9) = 1.5
        //   {I2, I5} → I1: conf 2/2 = 1, lift 1 / (6/9) = 1.5
        //   I4 → I2, I5 → I2, {I1, I5} → I2: conf 1, lift 1 / (7/9) = 9/7
        // The other rules fall below: I1 → I2 and I3 → I1 at 4/6, {I1, I2} → I5 at 2/4, ...
        let found = rules(&itemsets, 9, 0.7).unwrap();
        let expected = [
            (vec![5], vec![1, 2], 2.25),
            (vec![5], vec![1], 1.5),
            (vec![2, 5], vec![1], 1.5),
            (vec![4], vec![2], 9.0 / 7.0),
            (vec![5], vec![2], 9.0 / 7.0),
            (vec![1, 5], vec![2], 9.0 / 7.0),
        ];
        assert_eq!(found.len(), expected.len());
        for (rule, (antecedent, consequent, lift)) in found.iter().zip(expected) {
            assert_eq!(rule.antecedent, antecedent);
            assert_eq!(rule.consequent, consequent);
            assert_eq!(rule.count, 2);
            assert_close(rule.support, 2.0 / 9.0, "support");
            assert_close(rule.confidence, 1.0, "confidence");
            assert_close(rule.lift, lift, "lift");
        }

        // All twenty rules of the 13 itemsets at no threshold, a few checked by hand.
        let all = rules(&itemsets, 9, 0.0).unwrap();
        assert_eq!(all.len(), 6 * 2 + 2 * 6);
        let find = |antecedent: &[u32], consequent: &[u32]| {
            all.iter()
                .find(|rule| rule.antecedent == antecedent && rule.consequent == consequent)
                .unwrap()
        };
        let rule = find(&[1, 2], &[5]);
        assert_close(rule.confidence, 0.5, "{I1, I2} → I5 confidence");
        assert_close(rule.lift, 0.5 / (2.0 / 9.0), "{I1, I2} → I5 lift");
        let rule = find(&[2], &[1, 5]);
        assert_close(rule.confidence, 2.0 / 7.0, "I2 → {I1, I5} confidence");
        assert_close(rule.lift, 9.0 / 7.0, "I2 → {I1, I5} lift");
        let rule = find(&[3], &[2]);
        assert_eq!(rule.count, 4);
        assert_close(rule.confidence, 4.0 / 6.0, "I3 → I2 confidence");
        assert_close(rule.lift, (4.0 / 6.0) / (7.0 / 9.0), "I3 → I2 lift");
        assert_close(find(&[3], &[1]).lift, 1.0, "I3 → I1 lift");
        assert!(all.windows(2).all(|pair| pair[0].lift >= pair[1].lift));
    }

    #[test]
    fn bought_together_ranks_single_products_by_lift() {
        let itemsets = frequent_itemsets(&textbook(), 2.0 / 9.0, 10).unwrap();
        let all = rules(&itemsets, 9, 0.0).unwrap();
        let with_5 = bought_together(&all, 5, 10);
        let consequents: Vec<&[u32]> = with_5
            .iter()
            .map(|rule| rule.consequent.as_slice())
            .collect();
        // I5 → I1 (lift 1.5) before I5 → I2 (9/7); I5 → {I1, I2} is not a single product.
        assert_eq!(consequents, [&[1][..], &[2][..]]);
        assert_eq!(bought_together(&all, 5, 1).len(), 1);
        let with_3: Vec<&[u32]> = bought_together(&all, 3, 10)
            .iter()
            .map(|rule| rule.consequent.as_slice())
            .collect();
        // I3 → I1: lift 1; I3 → I2: lift 6/7.
        assert_eq!(with_3, [&[1][..], &[2][..]]);
        assert!(bought_together(&all, 99, 10).is_empty());
        // The order does not depend on the order of the rules given.
        let reversed: Vec<Rule> = all.iter().rev().cloned().collect();
        assert_eq!(bought_together(&reversed, 5, 10), with_5);
    }

    #[test]
    fn agrees_with_brute_force_on_random_data() {
        let mut rng = Lcg(0x5eed);
        let supports = [0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 1.0 / 3.0, 0.5, 0.7, 1.0];
        for round in 0..600 {
            let baskets = random_baskets(&mut rng);
            let min_support = if round % 2 == 0 {
                supports[rng.below(supports.len() as u64) as usize]
            } else {
                (rng.unit() * 0.6).max(1e-9)
            };
            let max_len = 1 + rng.below(6) as usize;
            let found = frequent_itemsets(&baskets, min_support, max_len).unwrap();
            let expected = brute_force(&baskets, min_support, max_len);
            assert_eq!(
                found, expected,
                "round {round}: {baskets:?} at support {min_support}, max_len {max_len}"
            );
        }
    }

    #[test]
    fn agrees_with_brute_force_on_larger_data() {
        let mut rng = Lcg(42);
        for _ in 0..20 {
            let products = 12;
            let baskets: Vec<Vec<u32>> = (0..400)
                .map(|_| {
                    let size = 1 + rng.below(9);
                    (0..size).map(|_| rng.skewed(products) as u32).collect()
                })
                .collect();
            for &min_support in &[0.02, 0.05, 0.1] {
                let found = frequent_itemsets(&baskets, min_support, 12).unwrap();
                assert_eq!(found, brute_force(&baskets, min_support, 12));
            }
        }
    }

    #[test]
    fn pairs_over_many_products_match_direct_counts() {
        // Hundreds of frequent products and long baskets: more items than fit in one sort key.
        let mut rng = Lcg(99);
        let baskets: Vec<Vec<u32>> = (0..3000)
            .map(|_| {
                let size = 6 + rng.below(10);
                (0..size).map(|_| rng.skewed(400) as u32).collect()
            })
            .collect();
        let min_support = 0.004;
        let found = frequent_itemsets(&baskets, min_support, 2).unwrap();

        let mut counts: HashMap<Vec<u32>, u64> = HashMap::new();
        for basket in &baskets {
            let distinct: Vec<u32> = basket
                .iter()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            for (at, &a) in distinct.iter().enumerate() {
                *counts.entry(vec![a]).or_default() += 1;
                for &b in &distinct[at + 1..] {
                    *counts.entry(vec![a, b]).or_default() += 1;
                }
            }
        }
        let mut expected: Vec<Itemset> = counts
            .into_iter()
            .filter(|&(_, count)| count as f64 / baskets.len() as f64 >= min_support)
            .map(|(items, count)| Itemset { items, count })
            .collect();
        expected.sort_by(|a, b| {
            a.items
                .len()
                .cmp(&b.items.len())
                .then_with(|| a.items.cmp(&b.items))
        });
        assert!(expected.iter().filter(|set| set.items.len() == 1).count() > 200);
        assert!(expected.iter().filter(|set| set.items.len() == 2).count() > 1000);
        assert_eq!(found, expected);
    }

    #[test]
    fn paths_sort_like_their_items() {
        // Wide items leave room for few of them in a key, so long paths tie on the key.
        let mut rng = Lcg(11);
        for items in [1usize, 2, 3, 300, 1 << 20, 1 << 31, u32::MAX as usize + 1] {
            let mut paths = Paths::with_capacity(0, 0);
            for _ in 0..500 {
                let len = rng.below(9) as usize;
                let mut path: Vec<u32> = (0..len)
                    .map(|_| {
                        // Few distinct values, so that prefixes are often shared.
                        let last = items as u64 - 1;
                        let pick = [0, 1.min(last), items as u64 / 2, last];
                        pick[rng.below(4) as usize] as u32
                    })
                    .collect();
                path.sort_unstable();
                path.dedup();
                paths.push(&path, 1);
            }
            let order = sorted_order(&paths, items);
            let mut expected: Vec<usize> = (0..paths.len()).collect();
            expected.sort_by(|&a, &b| paths.path(a).cmp(paths.path(b)));
            let sorted: Vec<&[u32]> = order.iter().map(|&k| paths.path(k)).collect();
            let wanted: Vec<&[u32]> = expected.iter().map(|&k| paths.path(k)).collect();
            assert_eq!(sorted, wanted, "{items} items");
        }
    }

    #[test]
    fn rules_match_counts_from_the_baskets() {
        let mut rng = Lcg(7);
        let mut checked = 0;
        for _ in 0..300 {
            let baskets = random_baskets(&mut rng);
            let total = baskets.len() as u64;
            let min_support = 0.02 + rng.unit() * 0.3;
            let max_len = 1 + rng.below(5) as usize;
            let min_confidence = [0.0, 0.3, 0.5, 0.8, 1.0][rng.below(5) as usize];
            let itemsets = frequent_itemsets(&baskets, min_support, max_len).unwrap();
            let found = rules(&itemsets, total, min_confidence).unwrap();

            // Every rule, scored from the raw baskets.
            for rule in &found {
                let both: Vec<u32> = rule
                    .antecedent
                    .iter()
                    .chain(&rule.consequent)
                    .copied()
                    .collect();
                let count = count_in(&baskets, &both);
                let antecedent = count_in(&baskets, &rule.antecedent);
                let consequent = count_in(&baskets, &rule.consequent);
                assert_eq!(rule.count, count);
                assert_close(rule.support, count as f64 / total as f64, "support");
                assert_close(
                    rule.confidence,
                    count as f64 / antecedent as f64,
                    "confidence",
                );
                assert_close(
                    rule.lift,
                    (count as f64 / antecedent as f64) / (consequent as f64 / total as f64),
                    "lift",
                );
                assert!(rule.confidence >= min_confidence);
                checked += 1;
            }

            // Exactly the splits of the frequent itemsets that reach the confidence.
            let mut expected = BTreeSet::new();
            for itemset in itemsets.iter().filter(|set| set.items.len() >= 2) {
                let len = itemset.items.len();
                for mask in 1..(1u32 << len) - 1 {
                    let (mut antecedent, mut consequent) = (Vec::new(), Vec::new());
                    for (bit, &item) in itemset.items.iter().enumerate() {
                        if mask & (1 << bit) != 0 {
                            antecedent.push(item);
                        } else {
                            consequent.push(item);
                        }
                    }
                    let confidence = itemset.count as f64 / count_in(&baskets, &antecedent) as f64;
                    if confidence >= min_confidence {
                        expected.insert((antecedent, consequent));
                    }
                }
            }
            let actual: BTreeSet<(Vec<u32>, Vec<u32>)> = found
                .iter()
                .map(|rule| (rule.antecedent.clone(), rule.consequent.clone()))
                .collect();
            assert_eq!(actual.len(), found.len());
            assert_eq!(actual, expected);

            // Best first, and in a total order.
            for pair in found.windows(2) {
                assert_eq!(rule_order(&pair[0], &pair[1]), Ordering::Less);
            }
        }
        assert!(checked > 1000, "only {checked} rules checked");
    }

    #[test]
    fn repeats_within_a_basket_count_once() {
        let baskets = vec![vec![1, 1, 2], vec![2, 1, 2, 2], vec![3, 3, 3]];
        assert_eq!(
            frequent_itemsets(&baskets, 0.5, 3).unwrap(),
            vec![set(&[1], 2), set(&[2], 2), set(&[1, 2], 2)]
        );
        let found = rules(&frequent_itemsets(&baskets, 0.5, 3).unwrap(), 3, 0.0).unwrap();
        assert_eq!(found.len(), 2);
        for rule in &found {
            assert_close(rule.confidence, 1.0, "confidence");
            assert_close(rule.lift, 1.5, "lift");
        }
    }

    #[test]
    fn empty_baskets_count_in_the_denominator() {
        let baskets = vec![vec![], vec![], vec![1], vec![1, 2]];
        assert_eq!(
            frequent_itemsets(&baskets, 0.5, 3).unwrap(),
            vec![set(&[1], 2)]
        );
        assert_eq!(
            frequent_itemsets(&baskets, 0.25, 3).unwrap(),
            vec![set(&[1], 2), set(&[2], 1), set(&[1, 2], 1)]
        );
        assert!(frequent_itemsets(&[vec![], vec![]], 0.1, 3)
            .unwrap()
            .is_empty());
        assert!(frequent_itemsets(&[], 0.1, 3).unwrap().is_empty());
        assert!(rules(&[], 0, 0.5).unwrap().is_empty());
    }

    #[test]
    fn full_support_keeps_what_every_basket_holds() {
        let baskets = vec![vec![4, 9, 1], vec![9, 4], vec![4, 2, 9, 9]];
        assert_eq!(
            frequent_itemsets(&baskets, 1.0, 5).unwrap(),
            vec![set(&[4], 3), set(&[9], 3), set(&[4, 9], 3)]
        );
        let found = rules(&frequent_itemsets(&baskets, 1.0, 5).unwrap(), 3, 1.0).unwrap();
        assert_eq!(found.len(), 2);
        assert!(found.iter().all(|rule| rule.lift == 1.0));
        assert!(frequent_itemsets(&[vec![]], 1.0, 1).unwrap().is_empty());
    }

    #[test]
    fn support_threshold_avoids_rounding() {
        // 0.3 * 10 rounds up to 3.0000000000000004; a count of 3 still reaches 0.3.
        assert_eq!(min_count(0.3, 10), 3);
        assert_eq!(min_count(2.0 / 9.0, 9), 2);
        assert_eq!(min_count(1.0, 7), 7);
        assert_eq!(min_count(1e-12, 7), 1);
        assert_eq!(min_count(0.5, 3), 2);
        for baskets in 1..200u64 {
            for step in 1..=100 {
                let support = step as f64 / 100.0;
                let count = min_count(support, baskets);
                assert!(count as f64 / baskets as f64 >= support);
                assert!(count == 1 || ((count - 1) as f64 / baskets as f64) < support);
            }
        }
    }

    #[test]
    fn bad_parameters_are_named() {
        let baskets = textbook();
        for support in [0.0, -0.1, 1.1, f64::NAN, f64::INFINITY] {
            let error = frequent_itemsets(&baskets, support, 3).unwrap_err();
            assert!(matches!(error, AssociationError::MinSupport(_)));
            assert!(error.to_string().contains("min_support"));
        }
        assert_eq!(
            frequent_itemsets(&baskets, 0.5, 0),
            Err(AssociationError::MaxLen(0))
        );
        assert_eq!(
            frequent_itemsets(&[], 0.5, 0),
            Err(AssociationError::MaxLen(0))
        );
        assert_eq!(
            AssociationError::MaxLen(0).to_string(),
            "max_len must be at least 1, got 0"
        );
        let itemsets = frequent_itemsets(&baskets, 0.2, 3).unwrap();
        for confidence in [-0.1, 1.5, f64::NAN] {
            let error = rules(&itemsets, 9, confidence).unwrap_err();
            assert!(matches!(error, AssociationError::MinConfidence(_)));
            assert!(error.to_string().contains("min_confidence"));
        }
    }

    #[test]
    fn inconsistent_itemsets_are_refused() {
        assert_eq!(
            rules(&[set(&[2, 1], 1)], 5, 0.0),
            Err(AssociationError::MalformedItemset(vec![2, 1]))
        );
        assert_eq!(
            rules(&[set(&[1, 1], 1)], 5, 0.0),
            Err(AssociationError::MalformedItemset(vec![1, 1]))
        );
        assert_eq!(
            rules(&[set(&[], 1)], 5, 0.0),
            Err(AssociationError::MalformedItemset(vec![]))
        );
        assert_eq!(
            rules(&[set(&[1], 1), set(&[1], 2)], 5, 0.0),
            Err(AssociationError::DuplicateItemset(vec![1]))
        );
        assert_eq!(
            rules(&[set(&[1], 6)], 5, 0.0),
            Err(AssociationError::CountOutOfRange {
                items: vec![1],
                count: 6,
                baskets: 5
            })
        );
        assert_eq!(
            rules(&[set(&[1], 0)], 5, 0.0),
            Err(AssociationError::CountOutOfRange {
                items: vec![1],
                count: 0,
                baskets: 5
            })
        );
        assert_eq!(
            rules(&[set(&[1], 3), set(&[1, 2], 2)], 5, 0.0),
            Err(AssociationError::MissingSubset {
                subset: vec![2],
                itemset: vec![1, 2]
            })
        );
        assert_eq!(
            rules(&[set(&[1], 3), set(&[2], 1), set(&[1, 2], 2)], 5, 0.0),
            Err(AssociationError::SubsetCountBelow {
                subset: vec![2],
                subset_count: 1,
                itemset: vec![1, 2],
                count: 2
            })
        );
        let long: Vec<u32> = (0..33).collect();
        assert_eq!(
            rules(&[set(&long, 1)], 5, 0.0),
            Err(AssociationError::TooLong(33))
        );
    }
}
