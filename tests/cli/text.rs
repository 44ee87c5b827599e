//! Text end to end through the binary: train, eval (per-class report with
//! the class names), predict on files and on stdin, Chinese with jieba
//! words, and every bad text input as one error line with nothing written.

use super::*;
use std::io::Write;
use std::process::Stdio;

/// A small English corpus, a folder per class, written from templates
/// with varied words so a bag of words can learn it.
fn corpus(dir: &Path) {
    let topics = [
        (
            "sport",
            ["match", "goal", "team", "coach", "league", "season"],
        ),
        (
            "money",
            ["bank", "market", "shares", "profit", "rates", "investor"],
        ),
        (
            "tech",
            ["software", "chip", "phone", "internet", "computer", "data"],
        ),
    ];
    for (label, words) in topics {
        let d = dir.join(label);
        std::fs::create_dir_all(&d).unwrap();
        for i in 0..24 {
            let text: Vec<&str> = (0..12).map(|k| words[(i * 7 + k * 5) % 6]).collect();
            let body = format!("Report {i}: the {} today.", text.join(" "));
            std::fs::write(d.join(format!("{i:03}.txt")), body).unwrap();
        }
    }
}

/// fastText on `data`, with `extra` flags (defaults: 8 epochs, a
/// 200-token vocabulary).
fn train_text(data: &str, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "train",
        "--data",
        data,
        "--model",
        "fasttext",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        path(out),
        "--batch",
        "8",
        "--lr",
        "0.05",
        "--optimizer",
        "adamw",
        "--val-split",
        "0",
    ];
    for (flag, default) in [("--epochs", "8"), ("--vocab-size", "200")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend(extra);
    gpurt(&args)
}

#[test]
fn text_train_eval_and_predict_on_files_and_stdin() {
    let t = tmp();
    let data = t.path().join("news");
    corpus(&data);
    let run = t.path().join("run");
    let d = format!("text:{}", data.display());
    let o = train_text(&d, &run, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stdout(&o);
    assert!(log.contains("72 documents read"), "{log}");
    for f in [
        "tokenizer.json",
        "split.json",
        "model.safetensors",
        "checkpoint.json",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let o = gpurt(&["eval", "--run", path(&run), "--device", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("accuracy 100.00%"), "{out}");
    for c in ["sport", "money", "tech"] {
        assert!(out.contains(c), "report lacks class {c}: {out}");
    }
    let doc = t.path().join("doc.txt");
    std::fs::write(&doc, "the coach said the team will win the league match").unwrap();
    let o = gpurt(&[
        "predict",
        "--run",
        path(&run),
        "--device",
        "cpu",
        path(&doc),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(": sport ("), "{}", stdout(&o));
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(["predict", "--run", path(&run), "--device", "cpu", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"bank shares and market rates\n\nnew phone chip and software\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = stdout(&o);
    assert!(out.contains("stdin:1: money"), "{out}");
    assert!(out.contains("stdin:3: tech"), "{out}");

    // Evaluation on other labelled text (here the whole corpus again).
    let o = gpurt(&["eval", "--run", path(&run), "--device", "cpu", "--data", &d]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("(72 documents)"), "{}", stdout(&o));

    // A resumed text run reuses its tokenizer and split, and continues.
    let o = train_text(&d, &run, &["--resume", path(&run), "--epochs", "10"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = stdout(&o);
    assert!(
        log.contains("resumed from") && log.contains("epoch 10/10"),
        "{log}"
    );
}

#[test]
fn chinese_sample_trains_and_predicts_with_jieba_words() {
    let t = tmp();
    let run = t.path().join("zh");
    let data = format!("text:{}/data/zh-news-sample", env!("CARGO_MANIFEST_DIR"));
    let o = train_text(
        &data,
        &run,
        &[
            "--segment",
            "jieba",
            "--epochs",
            "30",
            "--test-split",
            "0.25",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let heldout = std::fs::read_to_string(format!(
        "{}/data/zh-news-sample/heldout.tsv",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let rows: Vec<(&str, &str)> = heldout
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once('\t'))
        .collect();
    assert_eq!(rows.len(), 6);
    let mut child = Command::new(env!("CARGO_BIN_EXE_gpurt"))
        .args(["predict", "--run", path(&run), "--device", "cpu", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = rows.iter().map(|(_, text)| format!("{text}\n")).collect();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let lines: Vec<String> = stdout(&o).lines().map(str::to_owned).collect();
    let right = rows
        .iter()
        .zip(&lines)
        .filter(|((label, _), line)| line.contains(&format!(": {label} (")))
        .count();
    assert!(
        right >= 5,
        "{right} of 6 held-out sentences right: {lines:?}"
    );
}

#[test]
fn bad_text_inputs_are_one_line_and_write_nothing() {
    let t = tmp();
    let out = t.path().join("out");
    let gone = |what: &str| assert!(!out.exists(), "{what}: the run folder was written");

    // An unreadable document (a folder named like a text file).
    let data = t.path().join("unreadable");
    corpus(&data);
    std::fs::create_dir_all(data.join("tech/broken.txt")).unwrap();
    let o = train_text(&format!("text:{}", data.display()), &out, &[]);
    assert_fails_with(&o, &["broken.txt"]);
    gone("unreadable");

    // A CSV row with the wrong number of columns.
    let csv = t.path().join("news.csv");
    std::fs::write(&csv, "label,text\nsport,a match\nmoney,the bank,extra\n").unwrap();
    let o = train_text(&format!("text:{}", csv.display()), &out, &[]);
    assert_fails_with(&o, &["news.csv", "row 3"]);
    gone("columns");

    // An unknown label column.
    std::fs::write(&csv, "topic,text\nsport,a match\nmoney,the bank\n").unwrap();
    let o = train_text(&format!("text:{}", csv.display()), &out, &[]);
    assert_fails_with(&o, &["news.csv", "no column named 'label'"]);
    gone("label column");

    // Nothing left after cleaning.
    let empty = t.path().join("empty");
    std::fs::create_dir_all(empty.join("a")).unwrap();
    std::fs::write(empty.join("a/1.txt"), "  \n").unwrap();
    let o = train_text(&format!("text:{}", empty.display()), &out, &[]);
    assert_fails_with(&o, &["empty", "no documents left"]);
    gone("empty");

    // Test labels the training data lacks.
    let test = t.path().join("test");
    std::fs::create_dir_all(test.join("weather")).unwrap();
    std::fs::write(test.join("weather/1.txt"), "rain tomorrow").unwrap();
    let missing = t.path().join("no-such-folder");
    let o = train_text(&format!("text:{}", missing.display()), &out, &[]);
    assert_fails_with(&o, &["no-such-folder"]);
    gone("missing");
    let good = t.path().join("good");
    corpus(&good);
    let o = train_text(
        &format!("text:{}", good.display()),
        &out,
        &["--test-data", path(&test)],
    );
    assert_fails_with(&o, &["weather"]);
    gone("test labels");

    // A tokenizer.json that is not the run's.
    let run_a = t.path().join("a");
    let run_b = t.path().join("b");
    assert!(train_text(&format!("text:{}", good.display()), &run_a, &[])
        .status
        .success());
    assert!(train_text(
        &format!("text:{}", good.display()),
        &run_b,
        &["--vocab-size", "120"]
    )
    .status
    .success());
    std::fs::copy(run_b.join("tokenizer.json"), run_a.join("tokenizer.json")).unwrap();
    let o = gpurt(&["eval", "--run", path(&run_a), "--device", "cpu"]);
    assert_fails_with(&o, &["tokenizer.json", "rows"]);
}

/// CSV without a header (columns by index) and TSV with named columns
/// train the same way as folders.
#[test]
fn csv_and_tsv_tables_train_with_columns_by_index_or_name() {
    let t = tmp();
    let words = [
        ("sport", "match goal team coach league season"),
        ("money", "bank market shares profit rates investor"),
    ];
    let mut csv = String::new();
    let mut tsv = String::from("id\tbody\ttopic\n");
    for i in 0..20 {
        for (label, w) in words {
            let ws: Vec<&str> = w.split(' ').collect();
            let text = format!(
                "{} {} {} item {i}",
                ws[i % 6],
                ws[(i + 2) % 6],
                ws[(i + 4) % 6]
            );
            csv.push_str(&format!("\"{text}, noted\",{label}\n"));
            tsv.push_str(&format!("{i}\t{text}\t{label}\n"));
        }
    }
    let (c, s) = (t.path().join("news.csv"), t.path().join("news.tsv"));
    std::fs::write(&c, csv).unwrap();
    std::fs::write(&s, tsv).unwrap();
    let o = train_text(
        &format!("text:{}", c.display()),
        &t.path().join("csv"),
        &["--no-header", "--label-column", "1", "--text-column", "0"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("40 documents read"), "{}", stdout(&o));
    let o = train_text(
        &format!("text:{}", s.display()),
        &t.path().join("tsv"),
        &["--label-column", "topic", "--text-column", "body"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("test: loss"), "{}", stdout(&o));
}
