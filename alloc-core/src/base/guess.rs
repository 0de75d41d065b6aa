//! Using a guessed value in place of a computed one, so that the work that depends on it need
//! not wait for the computation: the processor predicts the branch that checks the guess and
//! goes on with the guessed value.
//!
//! A compiler that sees `if x == guess { f(guess) } else { f(x) }` may merge the arms into
//! `f(x)`, or into a select whose result waits for `x` again. [`confirmed`] keeps the arms
//! apart: its value is the guess, but the compiler can neither see that it equals `x` nor move
//! it out of the branch that checked it.

/// `guess`, when `computed == guess`; otherwise `computed`. The value returned on the first
/// arm depends on `guess` alone, not on the instructions that produced `computed`.
#[inline(always)]
pub fn confirmed(computed: usize, guess: usize) -> usize {
    // Not `pure`: the compiler may not move it into the branch below, where it would know that
    // `guess` equals `computed` and pass `computed` through instead.
    let mut hidden = guess;
    // SAFETY: an empty assembly block that only passes a register through.
    unsafe {
        core::arch::asm!("/* {0} */", inout(reg) hidden, options(nomem, nostack, preserves_flags))
    };
    if computed == guess {
        // Not `pure` either: the compiler may not run it before the check, so the check stays
        // a branch rather than a select that would wait for `computed`.
        // SAFETY: as above.
        unsafe {
            core::arch::asm!("/* {0} */", inout(reg) hidden, options(nomem, nostack, preserves_flags))
        };
        hidden
    } else {
        computed
    }
}

#[cfg(test)]
mod tests {
    use super::confirmed;

    #[test]
    fn the_value_is_always_the_computed_one() {
        for (computed, guess) in [(3, 3), (3, 4), (0, usize::MAX), (7, 7)] {
            assert_eq!(confirmed(computed, guess), computed);
        }
    }
}
