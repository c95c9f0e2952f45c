//! Every kind of `.snn` error, rendered as a user sees it.

use insta::assert_snapshot;
use snnc::dsl::{parse, Diagnostic};

fn diag(src: &str) -> Diagnostic {
    match parse(src, "model.snn") {
        Ok(m) => panic!("expected an error, parsed {m:?}"),
        Err(d) => d,
    }
}

fn err(src: &str) -> String {
    diag(src).render("model.snn", src)
}

#[test]
fn unknown_layer() {
    assert_snapshot!(err("input 1x28x28\n\nconv3d 32 kernel=3\n"));
}

#[test]
fn unknown_layer_far_from_any_keyword() {
    assert_snapshot!(err("input 64\nlinear 10\ntransformer 8\n"));
}

#[test]
fn unknown_header_keyword_suggests_header() {
    assert_snapshot!(err("inptu 64\nlinear 10\n"));
}

#[test]
fn number_instead_of_layer() {
    assert_snapshot!(err("input 64\n32\n"));
}

#[test]
fn option_on_its_own_line() {
    assert_snapshot!(err("input 64\nlinear 10\n    bias=false\n"));
}

#[test]
fn unknown_option_with_suggestion() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 strid=2\n"));
}

#[test]
fn unknown_option_lists_valid_ones() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 groups=2\n"));
}

#[test]
fn unknown_option_for_layer_without_options() {
    assert_snapshot!(err("input 1x28x28\nflatten start=1\n"));
}

#[test]
fn named_positional_argument() {
    assert_snapshot!(err("input 64\ndropout p=0.5\n"));
}

#[test]
fn misspelled_shortcut() {
    assert_snapshot!(err(
        "input 64\nresidual {\n    linear 64\n}\nshortcat {\n    linear 64\n}\n"
    ));
}

#[test]
fn bad_integer() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 kernel=abc\n"));
}

#[test]
fn float_for_integer() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 kernel=3.5\n"));
}

#[test]
fn bad_positional_integer() {
    assert_snapshot!(err("input 64\nlinear ten\n"));
}

#[test]
fn bad_bool() {
    assert_snapshot!(err("input 64\nlinear 10 bias=yes\n"));
}

#[test]
fn bad_float() {
    assert_snapshot!(err("input 64\nlinear 10\nlif theta=high\n"));
}

#[test]
fn nan_is_not_a_number() {
    assert_snapshot!(err("input 64\nlinear 10\nlif v_reset=nan\n"));
}

#[test]
fn bad_enum_value_with_suggestion() {
    assert_snapshot!(err("input 64\nlinear 10\nlif reset=sof\n"));
}

#[test]
fn bad_enum_value_lists_choices() {
    assert_snapshot!(err("input 64 encoding=rate\nlinear 10\n"));
}

#[test]
fn out_of_range_stride() {
    assert_snapshot!(err("input 1x28x28\nmaxpool 2 stride=0\n"));
}

#[test]
fn out_of_range_output_size() {
    assert_snapshot!(err("input 64\nlinear 0\n"));
}

#[test]
fn negative_integer() {
    assert_snapshot!(err("input 1x28x28\nconv2d 8 padding=-1\n"));
}

#[test]
fn out_of_range_dropout() {
    assert_snapshot!(err("input 64\ndropout 1\n"));
}

#[test]
fn out_of_range_lambda() {
    assert_snapshot!(err("input 64\nlinear 10\nlif lambda=1.5\n"));
}

#[test]
fn out_of_range_theta() {
    assert_snapshot!(err("input 64\nneuron theta=0\nlinear 10\n"));
}

#[test]
fn out_of_range_alpha() {
    assert_snapshot!(err("input 64\nlinear 10\nif alpha=-4\n"));
}

#[test]
fn out_of_range_batchnorm() {
    assert_snapshot!(err("input 1x8x8\nbatchnorm eps=0\n"));
    assert_snapshot!(err("input 1x8x8\nbatchnorm momentum=1.01\n"));
}

#[test]
fn out_of_range_shape_dim() {
    assert_snapshot!(err("input 1x0x28\nflatten\n"));
}

#[test]
fn shape_with_two_dims() {
    assert_snapshot!(err("input 28x28\nflatten\n"));
}

#[test]
fn malformed_shape() {
    assert_snapshot!(err("input 1x28x\nflatten\n"));
}

#[test]
fn missing_positional() {
    assert_snapshot!(err("input 1x28x28\nconv2d kernel=5\n"));
}

#[test]
fn missing_dropout_probability() {
    assert_snapshot!(err("input 64\ndropout\n"));
}

#[test]
fn extra_positional() {
    assert_snapshot!(err("input 64\nlinear 10 20\n"));
}

#[test]
fn extra_argument_to_flatten() {
    assert_snapshot!(err("input 1x4x4\nflatten 1\n"));
}

#[test]
fn duplicate_option() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 kernel=3 stride=1 kernel=5\n"));
}

#[test]
fn option_without_value() {
    assert_snapshot!(err("input 64\nlinear 10 bias\n"));
}

#[test]
fn enum_option_without_value() {
    assert_snapshot!(err("input 64\nlinear 10\nlif surrogate\n"));
}

#[test]
fn option_with_empty_value() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 kernel=\n"));
}

#[test]
fn option_with_spaces_around_equals() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 kernel = 3\n"));
}

#[test]
fn equals_without_name() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32 =3\n"));
}

#[test]
fn missing_input_points_at_first_layer() {
    let src = "model m\n# no input\nlinear 10\nlif\n";
    assert_snapshot!(err(src));
    let d = diag(src);
    assert_eq!((d.line, d.col, d.len), (3, 1, 6));
}

#[test]
fn missing_input_without_layers() {
    let src = "model m\n# nothing else\n";
    assert_snapshot!(err(src));
    let d = diag(src);
    assert_eq!((d.line, d.col), (3, 1));
}

#[test]
fn input_after_layers() {
    assert_snapshot!(err("linear 10\nlif\ninput 64\n"));
}

#[test]
fn duplicate_input() {
    assert_snapshot!(err("input 64\ninput 32\nlinear 10\n"));
}

#[test]
fn duplicate_model() {
    assert_snapshot!(err("model a\ninput 64\nmodel b\nlinear 10\n"));
}

#[test]
fn duplicate_neuron() {
    assert_snapshot!(err(
        "input 64\nneuron lambda=0.5\nneuron theta=2\nlinear 10\n"
    ));
}

#[test]
fn neuron_after_layers() {
    assert_snapshot!(err("input 64\nlinear 10\nneuron lambda=0.5\nlif\n"));
}

#[test]
fn model_after_layers() {
    assert_snapshot!(err("input 64\nlinear 10\nmodel late\n"));
}

#[test]
fn lambda_on_if() {
    let src = "input 64\nlinear 10\nif theta=1 lambda=0.5\n";
    assert_snapshot!(err(src));
    let d = diag(src);
    assert_eq!((d.line, d.col, d.len), (3, 12, 6));
}

#[test]
fn unclosed_residual() {
    let src = "input 1x8x8\nconv2d 4\nresidual {\n    conv2d 4\n    lif\n";
    assert_snapshot!(err(src));
    let d = diag(src);
    assert_eq!((d.line, d.col, d.len), (3, 1, 8));
}

#[test]
fn unclosed_nested_residual_points_at_inner() {
    let src = "input 1x8x8\nresidual {\n    residual {\n        conv2d 1\n";
    assert_snapshot!(err(src));
}

#[test]
fn unclosed_shortcut() {
    assert_snapshot!(err(
        "input 1x8x8\nresidual {\n    conv2d 4\n} shortcut {\n    conv2d 4 kernel=1\n"
    ));
}

#[test]
fn residual_without_brace() {
    assert_snapshot!(err("input 1x8x8\nresidual\n    conv2d 4\n}\n"));
}

#[test]
fn layer_after_open_brace() {
    assert_snapshot!(err("input 1x8x8\nresidual { conv2d 4\n}\n"));
}

#[test]
fn empty_residual() {
    assert_snapshot!(err("input 1x8x8\nresidual {\n}\n"));
}

#[test]
fn unexpected_close_brace() {
    assert_snapshot!(err("input 64\nlinear 10\n}\n"));
}

#[test]
fn close_brace_in_layer_line() {
    assert_snapshot!(err("input 64\nresidual {\n    linear 10 }\n"));
}

#[test]
fn junk_after_close_brace() {
    assert_snapshot!(err("input 64\nresidual {\n    linear 64\n} linear 10\n"));
}

#[test]
fn shortcut_without_residual() {
    assert_snapshot!(err("input 64\nlinear 10\nshortcut {\n    linear 10\n}\n"));
}

#[test]
fn second_shortcut() {
    assert_snapshot!(err(
        "input 64\nresidual {\n    linear 64\n} shortcut {\n    linear 64\n} shortcut {\n}\n"
    ));
}

#[test]
fn shortcut_not_right_after_close() {
    assert_snapshot!(err(
        "input 64\nresidual {\n    linear 64\n}\nlif\nshortcut {\n    linear 64\n}\n"
    ));
}

#[test]
fn bad_character() {
    let src = "input 64\nlinear 10 @\n";
    assert_snapshot!(err(src));
    let d = diag(src);
    assert_eq!((d.line, d.col, d.len), (2, 11, 1));
}

#[test]
fn comma_between_options() {
    assert_snapshot!(err("input 1x28x28\nconv2d 32, kernel=3\n"));
}

#[test]
fn empty_model() {
    assert_snapshot!(err("model empty\ninput 64\n# layers to come\n"));
}

#[test]
fn empty_file() {
    assert_snapshot!(err(""));
}

#[test]
fn seed_without_poisson() {
    assert_snapshot!(err("input 64 seed=3\nlinear 10\n"));
}

#[test]
fn invalid_model_name() {
    assert_snapshot!(err("model 2fast\ninput 64\nlinear 10\n"));
}

#[test]
fn integer_too_large() {
    assert_snapshot!(err("input 64\nlinear 99999999999999999999999\n"));
}

#[test]
fn tab_indented_error_lines_up() {
    assert_snapshot!(err("input 64\nresidual {\n\tlinear 64 bais=false\n}\n"));
}

#[test]
fn error_on_line_ten_widens_gutter() {
    let src = "input 64\n\n\n\n\n\n\n\n\nlinaer 10\n";
    assert_snapshot!(err(src));
}

#[test]
fn display_is_the_message() {
    let d = diag("input 64\nlinear 10 bias=yes\n");
    assert_eq!(
        d.to_string(),
        "expected `true` or `false` for `bias`, found `yes`"
    );
    let boxed: Box<dyn std::error::Error> = Box::new(d);
    assert!(boxed.to_string().contains("bias"));
}

#[test]
fn parse_file_reports_unreadable_file() {
    let path = std::path::Path::new("/nonexistent/dir/net.snn");
    // The error displays without `error: ` (the CLI adds it when printing).
    let e = snnc::dsl::parse_file(path).unwrap_err().to_string();
    assert!(
        e.starts_with("cannot read `/nonexistent/dir/net.snn`: "),
        "{e}"
    );
}

#[test]
fn parse_file_renders_errors_with_the_path() {
    let dir = std::env::temp_dir().join(format!("snnc-dsl-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.snn");
    std::fs::write(&path, "input 64\nlinear 10 strid=2\n").unwrap();
    let e = snnc::dsl::parse_file(&path).unwrap_err().to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(
        e.starts_with("unknown option `strid` for `linear`\n --> "),
        "{e}"
    );
    assert!(e.contains("bad.snn:2:11"), "{e}");
}
