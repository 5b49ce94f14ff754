//! calib (in progress)
