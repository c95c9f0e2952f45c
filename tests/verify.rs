//! The verifier rejects malformed graphs with a message naming the problem.

use snnc::ir::{self, DType, Graph, LayerInfo, Node, Op, Role};

fn node(op: Op, shape: &[usize], t: Option<usize>, role: Role) -> Node {
    Node {
        op,
        shape: shape.to_vec(),
        dtype: DType::F32,
        layer: Some(0),
        t,
        role,
    }
}

fn base() -> Graph {
    let mut g = Graph::new("g", 3, 1);
    g.layers.push(LayerInfo {
        path: "0".into(),
        keyword: "lif".into(),
    });
    g
}

#[test]
fn accepts_a_valid_graph() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let v = g.add(node(Op::Detach, &[1, 2], Some(0), Role::State), &[x]);
    let u = g.add(node(Op::Add, &[1, 2], Some(1), Role::Forward), &[v, x]);
    g.outputs.push(("o".into(), u));
    ir::verify(&g).unwrap();
}

#[test]
fn rejects_wrong_shape() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let w = g.add(
        node(Op::Param { name: "w".into() }, &[3, 5], None, Role::Param),
        &[],
    );
    let y = g.add(
        node(
            Op::MatMul {
                ta: false,
                tb: true,
            },
            &[1, 3],
            Some(0),
            Role::Forward,
        ),
        &[x, w],
    );
    g.outputs.push(("o".into(), y));
    let e = ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("matmul inner dimensions differ"), "{e}");
}

#[test]
fn rejects_annotated_shape_that_op_does_not_give() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let y = g.add(node(Op::Scale(2.0), &[1, 3], Some(0), Role::Forward), &[x]);
    g.outputs.push(("o".into(), y));
    let e = ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("annotated shape [1, 3], op gives [1, 2]"), "{e}");
}

#[test]
fn rejects_a_cycle() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let a = g.add(node(Op::Scale(1.0), &[1, 2], Some(0), Role::Forward), &[x]);
    let b = g.add(node(Op::Scale(1.0), &[1, 2], Some(0), Role::Forward), &[a]);
    g.g.add_edge(b, a, 1);
    g.outputs.push(("o".into(), b));
    assert!(ir::verify(&g).unwrap_err().to_string().contains("cycle"));
}

#[test]
fn rejects_reading_across_more_than_one_step() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let v0 = g.add(node(Op::Detach, &[1, 2], Some(0), Role::State), &[x]);
    let u2 = g.add(node(Op::Add, &[1, 2], Some(2), Role::Forward), &[v0, x]);
    g.outputs.push(("o".into(), u2));
    let e = ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("step 2 reads detach at step 0"), "{e}");
}

#[test]
fn rejects_reading_a_non_state_value_of_the_previous_step() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let a0 = g.add(node(Op::Detach, &[1, 2], Some(0), Role::Forward), &[x]);
    let u1 = g.add(node(Op::Add, &[1, 2], Some(1), Role::Forward), &[a0, x]);
    g.outputs.push(("o".into(), u1));
    assert!(ir::verify(&g).is_err());
}

#[test]
fn rejects_a_param_with_a_timestep() {
    let mut g = base();
    let w = g.add(
        node(Op::Param { name: "w".into() }, &[2], Some(0), Role::Param),
        &[],
    );
    g.outputs.push(("o".into(), w));
    let e = ir::verify(&g).unwrap_err().to_string();
    assert!(e.contains("param node"), "{e}");
}

#[test]
fn rejects_a_computed_node_without_layer() {
    let mut g = base();
    let x = g.add(
        node(Op::Input { name: "x".into() }, &[1, 2], None, Role::Input),
        &[],
    );
    let mut n = node(Op::Scale(2.0), &[1, 2], Some(0), Role::Forward);
    n.layer = None;
    let y = g.add(n, &[x]);
    g.outputs.push(("o".into(), y));
    assert!(ir::verify(&g)
        .unwrap_err()
        .to_string()
        .contains("without a layer"));
}
