//! What a live customer is made of. The customer aggregate owns this shape
//! ([`patron_domain::customer::holdings`]); the profiles and the analytics activity keep a copy
//! per customer so that a correction can fold a customer again from exactly the touchpoints it
//! owns.

pub use patron_domain::customer::holdings::Holdings;
