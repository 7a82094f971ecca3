mod common;

use std::path::Path;

use tqa::transcript::{Transcript, TranscriptError};

#[test]
fn shipped_transcript_has_the_89_interview_turns() {
    let t = Transcript::load(&common::shipped_transcript()).unwrap();
    assert_eq!(t.turns.len(), 89);
    assert_eq!(t.speakers(), ["主持人Harry Stebbings", "Sam Altman"]);
    let count = |name: &str| t.turns.iter().filter(|x| x.speaker == name).count();
    assert_eq!(count("主持人Harry Stebbings"), 45);
    assert_eq!(count("Sam Altman"), 44);
    let ids: Vec<String> = (1..=89).map(|i| format!("T{i}")).collect();
    assert_eq!(
        t.turns.iter().map(|x| x.id.clone()).collect::<Vec<_>>(),
        ids
    );
    assert!(t.turns[0].text.starts_with("准备好了吗"));
}

#[test]
fn article_furniture_is_not_in_any_turn() {
    let t = Transcript::load(&common::shipped_transcript()).unwrap();
    for turn in &t.turns {
        for marker in [
            "内容导读",
            "往期精选",
            "参考资料",
            "![",
            "mmbiz",
            "关注公众号",
            "**",
            "万字全文",
        ] {
            assert!(
                !turn.text.contains(marker),
                "{} contains {marker:?}",
                turn.id
            );
        }
    }
}

#[test]
fn hard_wrapped_names_are_rejoined() {
    let t = Transcript::load(&common::shipped_transcript()).unwrap();
    let all: String = t.turns.iter().map(|x| x.text.as_str()).collect();
    assert!(all.contains("Harry Stebbings"));
    assert!(all.contains("Peter Thiel"));
    assert!(all.contains("OpenAI可能会去哪里碾压"));
}

#[test]
fn every_gold_quote_of_the_shipped_sets_lies_in_one_turn() {
    let t = Transcript::load(&common::shipped_transcript()).unwrap();
    let sets = [
        common::dev_set(),
        common::dev_set().with_file_name("holdout.jsonl"),
    ];
    for item in sets
        .iter()
        .flat_map(|set| tqa::eval::load_set(set).unwrap())
    {
        for quote in &item.gold_quotes {
            let holders = t
                .turns
                .iter()
                .filter(|x| x.text.replace('\n', "").contains(quote.as_str()))
                .count();
            assert_eq!(holders, 1, "{}: {quote}", item.id);
        }
    }
}

#[test]
fn plain_speaker_colon_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("plain.txt");
    std::fs::write(
        &path,
        "Interviewer: How did it start?\n\nGuest： 从一个小实验开始。\n\nInterviewer: And then?\n",
    )
    .unwrap();
    let t = Transcript::load(&path).unwrap();
    assert_eq!(t.turns.len(), 3);
    assert_eq!(t.turns[1].speaker, "Guest");
    assert_eq!(t.turns[1].text, "从一个小实验开始。");
}

#[test]
fn files_saved_with_a_byte_order_mark_read_as_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let text = "Interviewer: How did it start?\n\nGuest： 从一个小实验开始。\n";
    let plain = Transcript::parse(text, Path::new("plain.txt"))
        .unwrap()
        .turns;
    let utf8 = dir.path().join("utf8-bom.txt");
    std::fs::write(&utf8, format!("\u{feff}{text}")).unwrap();
    let utf16 = |bytes: fn(u16) -> [u8; 2], mark: [u8; 2], name: &str| {
        let path = dir.path().join(name);
        let mut data = mark.to_vec();
        data.extend(text.encode_utf16().flat_map(bytes));
        std::fs::write(&path, data).unwrap();
        path
    };
    let little = utf16(u16::to_le_bytes, [0xff, 0xfe], "utf16le.txt");
    let big = utf16(u16::to_be_bytes, [0xfe, 0xff], "utf16be.txt");
    for path in [&utf8, &little, &big] {
        let turns = Transcript::load(path).unwrap().turns;
        assert_eq!(turns, plain, "{}", path.display());
    }
    assert_eq!(plain[0].speaker, "Interviewer");
    let subtitles = "WEBVTT\n\n00:00:01.000 --> 00:00:03.000\n<v Harry>What about agents?\n";
    let marked = Transcript::parse(&format!("\u{feff}{subtitles}"), Path::new("a.vtt")).unwrap();
    assert_eq!(marked.turns[0].speaker, "Harry");
    assert_eq!(
        marked.turns[0].start.map(|s| s.to_string()).as_deref(),
        Some("00:01")
    );

    let mut cut = std::fs::read(&little).unwrap();
    cut.pop();
    std::fs::write(&little, cut).unwrap();
    let err = Transcript::load(&little).unwrap_err();
    assert!(matches!(err, TranscriptError::NotUtf16 { .. }), "{err}");
    assert!(err.to_string().contains("save it again as UTF-8"), "{err}");
}

#[test]
fn bad_files_give_errors_that_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let binary = dir.path().join("gbk.txt");
    std::fs::write(&binary, [0xC4u8, 0xE3, 0xBA, 0xC3, 0x3A, 0xFF]).unwrap();
    let prose = dir.path().join("prose.txt");
    std::fs::write(&prose, "no speakers here, only prose").unwrap();

    assert!(matches!(
        Transcript::load(&empty),
        Err(TranscriptError::Empty { .. })
    ));
    let err = Transcript::load(&binary).unwrap_err();
    assert!(matches!(err, TranscriptError::NotUtf8 { offset: 0, .. }));
    assert!(err.to_string().contains("UTF-8"));
    assert!(matches!(
        Transcript::load(&prose),
        Err(TranscriptError::NoTurns { .. })
    ));
    for (name, bytes, tool) in [
        (
            "talk.pdf",
            &b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"[..],
            "pdftotext",
        ),
        ("talk.docx", &b"PK\x03\x04\x14\x00\x06\x00"[..], "pandoc"),
    ] {
        let document = dir.path().join(name);
        std::fs::write(&document, bytes).unwrap();
        let err = Transcript::load(&document).unwrap_err();
        assert!(matches!(err, TranscriptError::NotText { .. }), "{err}");
        assert!(err.to_string().contains(tool), "{err}");
        assert!(err.to_string().contains("talk.txt"), "{err}");
    }
    let missing = Transcript::load(Path::new("/nonexistent/t.md")).unwrap_err();
    assert!(missing.to_string().contains("/nonexistent/t.md"));
}
