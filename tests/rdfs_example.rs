//! Runs the one-file RDFS rounding example and checks it against the closed form.

#[allow(dead_code)]
#[path = "../examples/rdfs_rounding.rs"]
mod rdfs;

#[test]
fn rdfs_forward_rounds_and_gradient_is_the_fourier_surrogate() {
    let xs = [-1.3f32, -0.5, -0.2, 0.0, 0.25, 0.49, 0.51, 1.5, 2.7, 9.0];
    let (y, g) = rdfs::forward_and_grad(&xs);
    for i in 0..xs.len() {
        if xs[i] > 7.0 {
            // Clipped by the int4 range: no gradient whatever the rounding rule.
            assert_eq!((y[i], g[i]), (7.0, 0.0));
            continue;
        }
        assert_eq!(y[i], xs[i].round_ties_even(), "forward at {}", xs[i]);
        assert!(
            (g[i] - rdfs::rdfs_grad(xs[i], 0.93)).abs() < 1e-5,
            "grad at {}: {}",
            xs[i],
            g[i]
        );
    }
    // The surrogate is small at integers and peaks at the rounding jumps.
    assert!(g[3] < 0.05 && g[5] > 0.9 && g[6] > 0.9);
}

#[test]
fn rdfs_drives_an_optimisation() {
    let initial = rdfs::fit(&rdfs::Rdfs::default(), 0);
    let trained = rdfs::fit(&rdfs::Rdfs::default(), 60);
    assert!(initial.is_infinite());
    // 0.73 lies between the 3-bit grid points 0.75 and 0.5 (scale 0.25): the fit must reach 0.75.
    let best = (0.75f32 - 0.73).powi(2) * {
        let a: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 64) as f32 / 32.0) - 1.0)
            .collect();
        a.iter().map(|v| v * v).sum::<f32>() / 64.0
    };
    assert!(
        (trained - best).abs() < 1e-6,
        "trained loss {trained}, optimum {best}"
    );
}

#[test]
fn a_recipe_names_the_registered_rule() {
    let xs = [-1.3f32, -0.5, 0.5, 1.5, 2.7, 9.0];
    let want: Vec<f32> = xs.iter().map(|x| x.round_ties_even().min(7.0)).collect();
    assert_eq!(rdfs::from_recipe(&xs), want);
    assert_eq!(
        burn_quant::RoundingFn::name(&rdfs::register_rdfs()),
        rdfs::RDFS
    );
}
