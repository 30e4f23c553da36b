//! `safety_tolerance` and what it means for images: the API's 0 (strictest) … 6 (least strict),
//! default 2, mapped to a threshold on the classifier's "nsfw" probability. The prompt side of
//! the policy is in `safety::prompt`.

use crate::error::{EngineError, Result};

/// Threshold on the "nsfw" probability, by `safety_tolerance`: an image is moderated when its
/// score is at or above the threshold (the BFL CLI's `nsfw_score >= NSFW_THRESHOLD` rule).
///
/// BFL does not publish its mapping (engine-facts §6), so the table is ours, anchored on the
/// two public references for the same classifier (Falconsai/nsfw_image_detection):
/// - 2, the API default: 0.50, the classifier's own decision (the class with the higher
///   probability), which is Replicate cog-flux's rule (`argmax != "normal"`);
/// - 5: 0.85, the BFL reference CLI's `NSFW_THRESHOLD`;
/// - 6: 0.95, looser than either reference but never off: a confident detection is still refused;
/// - 0 and 1: 0.15 and 0.30, stricter than the classifier's decision, refusing images it finds
///   borderline; 3 and 4: 0.65 and 0.75, spaced evenly toward the CLI's value.
pub const NSFW_THRESHOLDS: [f32; 7] = [0.15, 0.30, 0.50, 0.65, 0.75, 0.85, 0.95];

/// The reason given for a moderated image (input or output; the caller picks the status,
/// `Request Moderated` or `Content Moderated`).
pub const IMAGE_REASON: &str = "The image was classified as NSFW.";

/// A validated `safety_tolerance`, 0 (strictest) ..= 6 (least strict).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SafetyTolerance(u8);

impl SafetyTolerance {
    /// The least strict tolerance.
    pub const MAX: u8 = 6;
    /// The API's default, 2.
    pub const DEFAULT: Self = Self(2);

    /// Checks the range.
    pub fn new(value: u8) -> Result<Self> {
        if value > Self::MAX {
            return Err(EngineError::InvalidInput(format!(
                "safety_tolerance {value} is outside 0..={}",
                Self::MAX
            )));
        }
        Ok(Self(value))
    }

    /// The value, 0..=6.
    pub fn get(self) -> u8 {
        self.0
    }

    /// The image threshold for this tolerance, from [`NSFW_THRESHOLDS`].
    pub fn nsfw_threshold(self) -> f32 {
        NSFW_THRESHOLDS[usize::from(self.0.min(Self::MAX))]
    }

    /// Whether an image with this "nsfw" probability is moderated. A NaN score (a broken
    /// classifier) is moderated: the check fails closed.
    pub fn blocks_nsfw_score(self, nsfw_score: f32) -> bool {
        nsfw_score.is_nan() || nsfw_score >= self.nsfw_threshold()
    }
}

impl Default for SafetyTolerance {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// The moderation reasons for an image with this "nsfw" probability at `tolerance`, or `None`
/// if it may be served. The reason does not state the score (no oracle for probing the
/// classifier's boundary); log the score on the operator's side if wanted.
pub fn moderate_nsfw_score(nsfw_score: f32, tolerance: SafetyTolerance) -> Option<Vec<String>> {
    tolerance
        .blocks_nsfw_score(nsfw_score)
        .then(|| vec![IMAGE_REASON.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_loosen_with_tolerance_and_anchor_on_the_references() {
        assert!(NSFW_THRESHOLDS.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(SafetyTolerance::default().nsfw_threshold(), 0.5);
        assert_eq!(
            SafetyTolerance::new(5).map(|t| t.nsfw_threshold()).ok(),
            Some(0.85)
        );
        // 6 is the CLI's 0.85 or looser, and never off.
        let six = SafetyTolerance::new(6)
            .map(|t| t.nsfw_threshold())
            .unwrap_or(0.0);
        assert!((0.85..1.0).contains(&six));
        assert!(SafetyTolerance::new(7).is_err());
    }

    #[test]
    fn image_reasons_follow_the_threshold() -> Result<()> {
        let t2 = SafetyTolerance::new(2)?;
        assert_eq!(moderate_nsfw_score(0.49, t2), None);
        assert_eq!(
            moderate_nsfw_score(0.5, t2),
            Some(vec![IMAGE_REASON.to_string()])
        );
        let t6 = SafetyTolerance::new(6)?;
        assert!(moderate_nsfw_score(0.9, t6).is_none());
        assert!(moderate_nsfw_score(0.99, t6).is_some());
        assert!(moderate_nsfw_score(f32::NAN, t6).is_some());
        assert!(moderate_nsfw_score(0.2, SafetyTolerance::new(0)?).is_some());
        Ok(())
    }
}
