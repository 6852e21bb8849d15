//! `word_problems`: short grade-school word problems in the style of GSM8K, from rlft's own
//! templates (shopping and change, sharing, rates, ages, savings, recipes...). Every template
//! draws its numbers so that each step is exact (divisions come out even, nothing goes
//! negative) and the answer is a non-negative integer; problems take 2 to 4 operations.

use rand::seq::IndexedRandom;
use rand::{Rng, rngs::StdRng};

/// The line after every problem: GSM8K's answer marker, which the `numeric` checks read.
pub const INSTRUCTION: &str =
    "Solve it step by step and end with the final answer as \"#### <number>\".";

/// Names with their pronouns, so sentences agree (`She buys`, `her friend`).
const PEOPLE: &[(&str, bool)] = &[
    ("Ava", true),
    ("Liam", false),
    ("Maya", true),
    ("Noah", false),
    ("Sofia", true),
    ("Ethan", false),
    ("Zara", true),
    ("Omar", false),
    ("Priya", true),
    ("Lucas", false),
    ("Chloe", true),
    ("Mateo", false),
    ("Amara", true),
    ("Kenji", false),
    ("Elena", true),
    ("Tariq", false),
    ("Grace", true),
    ("Diego", false),
    ("Hana", true),
    ("Samuel", false),
    ("Leila", true),
    ("Jonas", false),
    ("Fatima", true),
    ("Ben", false),
    ("Rosa", true),
    ("Felix", false),
    ("Nina", true),
    ("Arjun", false),
    ("Ivy", true),
    ("Theo", false),
];

#[derive(Clone, Copy)]
struct Person {
    name: &'static str,
    female: bool,
}

impl Person {
    /// `she` / `he`.
    fn subj(self) -> &'static str {
        if self.female { "she" } else { "he" }
    }

    /// `She` / `He`, to start a sentence.
    fn subj_cap(self) -> &'static str {
        if self.female { "She" } else { "He" }
    }
}

/// `n` different people.
fn people<const N: usize>(rng: &mut StdRng) -> [Person; N] {
    let mut chosen: Vec<usize> = Vec::with_capacity(N);
    while chosen.len() < N.min(PEOPLE.len()) {
        let i = rng.random_range(0..PEOPLE.len());
        if !chosen.contains(&i) {
            chosen.push(i);
        }
    }
    std::array::from_fn(|i| {
        let (name, female) = PEOPLE[chosen.get(i).copied().unwrap_or(0)];
        Person { name, female }
    })
}

fn person(rng: &mut StdRng) -> Person {
    let [p] = people::<1>(rng);
    p
}

fn pick<T: Copy>(rng: &mut StdRng, items: &[T]) -> T {
    // Every list below is a non-empty constant.
    *items.choose(rng).expect("non-empty list")
}

/// One problem template: how many arithmetic operations its solution takes, and a generator
/// of (problem text, answer).
pub(crate) struct Template {
    pub ops: usize,
    pub make: fn(&mut StdRng) -> (String, u64),
}

pub(crate) const TEMPLATES: &[Template] = &[
    Template {
        ops: 2,
        make: change,
    },
    Template {
        ops: 3,
        make: sharing,
    },
    Template {
        ops: 3,
        make: machine_rate,
    },
    Template {
        ops: 2,
        make: age_later,
    },
    Template {
        ops: 4,
        make: ages_sum,
    },
    Template {
        ops: 3,
        make: give_and_buy,
    },
    Template {
        ops: 2,
        make: savings,
    },
    Template {
        ops: 4,
        make: reading,
    },
    Template {
        ops: 2,
        make: recipe,
    },
    Template {
        ops: 3,
        make: travel,
    },
    Template {
        ops: 3,
        make: harvest,
    },
    Template {
        ops: 3,
        make: split_bill,
    },
    Template {
        ops: 3,
        make: pencil_boxes,
    },
    Template {
        ops: 3,
        make: wages,
    },
    Template {
        ops: 4,
        make: stickers,
    },
    Template {
        ops: 3,
        make: store_fraction,
    },
    Template {
        ops: 4,
        make: discount,
    },
    Template {
        ops: 2,
        make: fill_tank,
    },
    Template {
        ops: 4,
        make: running,
    },
];

/// Pays for `a` items at `price` with the smallest bill that covers them: bill - a * price.
fn change(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let (item, lo, hi) = pick(
        rng,
        &[
            ("notebooks", 2, 6),
            ("pens", 1, 3),
            ("sandwiches", 4, 8),
            ("comic books", 3, 9),
            ("bottles of juice", 2, 4),
            ("packs of cards", 3, 7),
        ],
    );
    let a = rng.random_range(2..=6u64);
    let price = rng.random_range(lo..=hi);
    let total = a * price;
    let bill = [10, 20, 50, 100]
        .into_iter()
        .find(|&b| b > total)
        .unwrap_or(total + 10);
    let text = format!(
        "{} buys {a} {item} for ${price} each and pays with a ${bill} bill. How many dollars \
         of change does {} get?",
        p.name,
        p.subj()
    );
    (text, bill - total)
}

/// (a + b * c) / k, with a chosen so the division is exact.
fn sharing(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let items = pick(
        rng,
        &[
            "marbles",
            "stickers",
            "crayons",
            "cookies",
            "baseball cards",
            "seashells",
        ],
    );
    let k = rng.random_range(2..=6u64);
    let b = rng.random_range(2..=5u64);
    let c = pick(rng, &[4u64, 5, 6, 8, 10, 12]);
    // At least 2 to start with, so the text never says "1 marbles".
    let least = (b * c + 2).div_ceil(k);
    let each = rng.random_range(least..=least + 8);
    let a = each * k - b * c;
    let text = format!(
        "{} has {a} {items}. {} buys {b} packs with {c} {items} in each pack. Then {} shares \
         all of the {items} equally among {k} friends. How many {items} does each friend get?",
        p.name,
        p.subj_cap(),
        p.subj()
    );
    (text, each)
}

/// hours * 60 / minutes * rate, with minutes dividing an hour.
fn machine_rate(rng: &mut StdRng) -> (String, u64) {
    let things = pick(
        rng,
        &[
            "toy cars",
            "bottles",
            "paper cups",
            "buttons",
            "candles",
            "bolts",
            "bricks",
            "envelopes",
        ],
    );
    let m = pick(rng, &[5u64, 10, 12, 15, 20, 30]);
    let r = rng.random_range(2..=12u64);
    let h = rng.random_range(2..=9u64);
    let text = format!(
        "A machine makes {r} {things} every {m} minutes. How many {things} does it make in {h} \
         hours?"
    );
    (text, h * 60 / m * r)
}

/// y + x + z.
fn age_later(rng: &mut StdRng) -> (String, u64) {
    let [a, b] = people::<2>(rng);
    let x = rng.random_range(2..=15u64);
    let y = rng.random_range(4..=30u64);
    let z = rng.random_range(2..=10u64);
    let text = format!(
        "{} is {x} years older than {}. {} is {y} years old. How old will {} be in {z} years?",
        a.name, b.name, b.name, a.name
    );
    (text, y + x + z)
}

/// (k * y + z) + (y + z).
fn ages_sum(rng: &mut StdRng) -> (String, u64) {
    let [a, b] = people::<2>(rng);
    let k = rng.random_range(2..=4u64);
    let y = rng.random_range(3..=12u64);
    let z = rng.random_range(2..=10u64);
    let times = ["", "", "twice", "three times", "four times"][k as usize];
    let text = format!(
        "{} is {times} as old as {}. {} is {y} years old. What will be the sum of their ages in \
         {z} years?",
        a.name, b.name, b.name
    );
    (text, (k * y + z) + (y + z))
}

/// n - m + k * j.
fn give_and_buy(rng: &mut StdRng) -> (String, u64) {
    let [p, friend] = people::<2>(rng);
    let items = pick(
        rng,
        &[
            "apples", "pencils", "stickers", "marbles", "stamps", "balloons",
        ],
    );
    let n = rng.random_range(10..=60u64);
    let m = rng.random_range(2..n);
    let k = rng.random_range(2..=5u64);
    let j = pick(rng, &[3u64, 4, 5, 6, 10]);
    let text = format!(
        "{} has {n} {items}. {} gives {m} of them to {} and then buys {k} packs of {j} {items}. \
         How many {items} does {} have now?",
        p.name,
        p.subj_cap(),
        friend.name,
        p.name
    );
    (text, n - m + k * j)
}

/// s * w - c.
fn savings(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let thing = pick(
        rng,
        &[
            "bike helmet",
            "board game",
            "pair of shoes",
            "jacket",
            "video game",
        ],
    );
    let s = rng.random_range(3..=25u64);
    let w = rng.random_range(3..=12u64);
    let saved = s * w;
    let c = rng.random_range(saved / 3..saved);
    let text = format!(
        "{} saves ${s} every week. After {w} weeks, {} spends ${c} on a {thing}. How many \
         dollars does {} have left?",
        p.name,
        p.subj(),
        p.subj()
    );
    (text, saved - c)
}

/// p - r * d, half of it read, the other half left.
fn reading(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let r = rng.random_range(5..=20u64);
    let d = rng.random_range(2..=7u64);
    let left = rng.random_range(10..=80u64);
    let pages = r * d + 2 * left;
    let text = format!(
        "A book has {pages} pages. {} reads {r} pages every day for {d} days. Then {} reads half \
         of the remaining pages. How many pages are still left to read?",
        p.name,
        p.subj()
    );
    (text, left)
}

/// a * c / b, with c a multiple of b.
fn recipe(rng: &mut StdRng) -> (String, u64) {
    let (amount, baked) = pick(
        rng,
        &[
            ("cups of flour", "muffins"),
            ("eggs", "pancakes"),
            ("spoons of sugar", "cookies"),
            ("cups of milk", "biscuits"),
            ("cups of oats", "granola bars"),
            ("bananas", "banana breads"),
            ("spoons of butter", "scones"),
            ("cups of rice", "rice balls"),
        ],
    );
    let a = rng.random_range(2..=9u64);
    let b = pick(rng, &[4u64, 6, 8, 10, 12, 20, 24]);
    let times = rng.random_range(2..=8u64);
    let c = b * times;
    let text = format!(
        "A recipe uses {a} {amount} to make {b} {baked}. How many {amount} are needed to make \
         {c} {baked}?"
    );
    (text, a * times)
}

/// v * h + u * g.
fn travel(rng: &mut StdRng) -> (String, u64) {
    let vehicle = pick(rng, &["train", "bus", "truck", "car"]);
    let v = 5 * rng.random_range(8..=24u64);
    let h = rng.random_range(2..=5u64);
    let u = 5 * rng.random_range(8..=24u64);
    let g = rng.random_range(2..=4u64);
    let text = format!(
        "A {vehicle} travels at {v} kilometres per hour for {h} hours and then at {u} \
         kilometres per hour for {g} hours. How many kilometres does it travel in total?"
    );
    (text, v * h + u * g)
}

/// (r * c - x) * t.
fn harvest(rng: &mut StdRng) -> (String, u64) {
    let (plants, fruit) = pick(
        rng,
        &[
            ("tomato plants", "tomatoes"),
            ("apple trees", "apples"),
            ("pepper plants", "peppers"),
        ],
    );
    let r = rng.random_range(3..=12u64);
    let c = rng.random_range(4..=15u64);
    let x = rng.random_range(2..=r * c / 2);
    let t = rng.random_range(2..=9u64);
    let text = format!(
        "A farmer plants {r} rows of {plants} with {c} in each row. {x} of them do not survive. \
         Each of the others gives {t} {fruit}. How many {fruit} does the farmer pick?"
    );
    (text, (r * c - x) * t)
}

/// (p * c + tip) / k, the tip rounded up so the bill splits evenly.
fn split_bill(rng: &mut StdRng) -> (String, u64) {
    let food = pick(
        rng,
        &["pizzas", "burgers", "salads", "curries", "noodle bowls"],
    );
    let k = rng.random_range(2..=6u64);
    let p = rng.random_range(2..=8u64);
    let c = rng.random_range(6..=18u64);
    let mut tip = rng.random_range(2..=12u64);
    tip += (k - (p * c + tip) % k) % k;
    let text = format!(
        "{k} friends order {p} {food} that cost ${c} each and leave a ${tip} tip. They split \
         the whole bill equally. How many dollars does each friend pay?"
    );
    (text, (p * c + tip) / k)
}

/// c * s * n / b, with s chosen so the boxes come out even.
fn pencil_boxes(rng: &mut StdRng) -> (String, u64) {
    let supply = pick(rng, &["pencils", "erasers", "markers", "glue sticks"]);
    let b = pick(rng, &[10u64, 12, 20, 24]);
    let c = rng.random_range(2..=9u64);
    let n = rng.random_range(2..=6u64);
    let fits: Vec<u64> = (15..=35).filter(|s| c * s * n % b == 0).collect();
    // 20 and 24 always fit, so `fits` is never empty.
    let s = fits.choose(rng).copied().unwrap_or(b);
    let text = format!(
        "A school has {c} classes with {s} students in each class. Every student needs {n} \
         {supply}, and {supply} come in boxes of {b}. How many boxes of {supply} does the \
         school need?"
    );
    (text, c * s * n / b)
}

/// w * (h + g) - s.
fn wages(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let w = rng.random_range(8..=25u64);
    let h = rng.random_range(2..=8u64);
    let g = rng.random_range(2..=8u64);
    let earned = w * (h + g);
    let s = rng.random_range(earned / 4..=earned * 3 / 4);
    let text = format!(
        "{} earns ${w} an hour. {} works {h} hours on Monday and {g} hours on Tuesday. Then {} \
         spends ${s} on groceries. How many dollars does {} have left from those two days?",
        p.name,
        p.subj_cap(),
        p.subj(),
        p.subj()
    );
    (text, earned - s)
}

/// x + k * x + (k * x - d).
fn stickers(rng: &mut StdRng) -> (String, u64) {
    let [a, b, c] = people::<3>(rng);
    let x = rng.random_range(3..=25u64);
    let k = rng.random_range(2..=5u64);
    let d = rng.random_range(2..k * x);
    let times = ["", "", "twice", "three times", "four times", "five times"][k as usize];
    let text = format!(
        "{} has {x} stickers. {} has {times} as many stickers as {}, and {} has {d} fewer \
         stickers than {}. How many stickers do the three of them have altogether?",
        a.name, b.name, a.name, c.name, b.name
    );
    (text, x + k * x + (k * x - d))
}

/// n - n / q - m.
fn store_fraction(rng: &mut StdRng) -> (String, u64) {
    let items = pick(rng, &["shirts", "hats", "umbrellas", "lamps", "mugs"]);
    let (part, q) = pick(
        rng,
        &[
            ("half", 2u64),
            ("a third", 3),
            ("a quarter", 4),
            ("a fifth", 5),
        ],
    );
    let n = q * rng.random_range(6..=30u64);
    let rest = n - n / q;
    let m = rng.random_range(2..rest);
    let text = format!(
        "A store has {n} {items}. It sells {part} of them in the morning and {m} more in the \
         afternoon. How many {items} are left?"
    );
    (text, rest - m)
}

/// k * (p - p * d / 100), with p a multiple of what makes the discount whole dollars.
fn discount(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let thing = pick(
        rng,
        &[
            "backpack",
            "lamp",
            "scarf",
            "toy robot",
            "water bottle",
            "board game",
        ],
    );
    let (d, step) = pick(rng, &[(10u64, 10u64), (20, 5), (25, 4), (50, 2)]);
    let price = step * rng.random_range(8 / step + 1..=120 / step);
    let k = rng.random_range(2..=5u64);
    let text = format!(
        "A {thing} costs ${price}. This week it is {d}% off. {} buys {k} of them at the sale \
         price. How many dollars does {} pay?",
        p.name,
        p.subj()
    );
    (text, k * (price - price * d / 100))
}

/// (v - s) / r.
fn fill_tank(rng: &mut StdRng) -> (String, u64) {
    let r = rng.random_range(2..=12u64);
    let t = rng.random_range(5..=40u64);
    let s = rng.random_range(10..=200u64);
    let v = s + r * t;
    let text = format!(
        "A tank holds {v} litres of water. It already has {s} litres in it, and a hose adds {r} \
         litres every minute. How many minutes does it take to fill the tank?"
    );
    (text, t)
}

/// w * (5 * a + 2 * b).
fn running(rng: &mut StdRng) -> (String, u64) {
    let p = person(rng);
    let a = rng.random_range(2..=8u64);
    let b = rng.random_range(3..=15u64);
    let w = rng.random_range(2..=6u64);
    let text = format!(
        "{} runs {a} kilometres on each weekday and {b} kilometres on each day of the weekend. \
         How many kilometres does {} run in {w} weeks?",
        p.name,
        p.subj()
    );
    (text, w * (5 * a + 2 * b))
}
