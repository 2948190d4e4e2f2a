using QLoRA.Data;
using QLoRA.Tokenization;

namespace QLoRA.Tests.Training;

public class DataTests
{
    private string _dir = "";

    [SetUp]
    public void Dir() => _dir = Directory.CreateTempSubdirectory("qlora-data-").FullName;

    [TearDown]
    public void Clean() => Directory.Delete(_dir, true);

    private string File_(string name, string text)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, text);
        return p;
    }

    [Test]
    public void ReadsAlpacaJsonlWithAndWithoutInput()
    {
        string p = File_("a.jsonl",
            "{\"instruction\":\"Add.\",\"input\":\"2 and 3\",\"output\":\"5\"}\n\n" +
            "{\"instruction\":\"Greet.\",\"input\":\"\",\"output\":\"Hello\"}\r\n");
        var (ex, plain) = DatasetReader.Read(p);
        Assert.That(plain, Is.False);
        Assert.That(ex, Has.Count.EqualTo(2));
        Assert.That(ex[0].Prompt, Is.EqualTo("### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n"));
        Assert.That(ex[0].Response, Is.EqualTo("5"));
        Assert.That(ex[1].Prompt, Is.EqualTo("### Instruction:\nGreet.\n\n### Response:\n"));
        Assert.That(ex[1].Origin, Is.EqualTo("a.jsonl:3"));
        var alpaca = DatasetReader.Read(p, new DataReadOptions { Prompt = PromptTemplate.Alpaca }).Examples;
        Assert.That(alpaca[1].Prompt, Does.StartWith("Below is an instruction that describes a task. Write a response").And.EndWith("### Response: "));
    }

    [Test]
    public void ReadsJsonArraysInputOutputChatAndText()
    {
        string arr = File_("a.json", "[\n {\"input\":\"Q: 1+1\\nA:\",\"output\":\" 2\"},\n {\"input\":\"x\",\"output\":\"y\"}\n]");
        var io = DatasetReader.Read(arr).Examples;
        Assert.That(io[0].Prompt, Is.EqualTo("Q: 1+1\nA:"));
        Assert.That(io[1].Origin, Is.EqualTo("a.json:3 (record 1)"));

        string chat = File_("c.jsonl",
            "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"Hi\"},{\"role\":\"assistant\",\"content\":\"Hello\"}]}\n" +
            "{\"conversations\":[{\"from\":\"human\",\"value\":\"Hi\"},{\"from\":\"gpt\",\"value\":\"Yo\"}]}\n");
        var c = DatasetReader.Read(chat).Examples;
        Assert.That(c[0].Messages, Is.EqualTo(new[] { new ChatMessage("system", "Be brief."), new ChatMessage("user", "Hi"), new ChatMessage("assistant", "Hello") }));
        Assert.That(c[1].Messages![1], Is.EqualTo(new ChatMessage("assistant", "Yo")));

        var (t, plain) = DatasetReader.Read(File_("t.txt", "Once upon a time."));
        Assert.That(plain, Is.True);
        Assert.That(t.Single().Segments.Single(), Is.EqualTo(new Segment("Once upon a time.", true)));
        Assert.That(DatasetReader.Read(File_("t.jsonl", "{\"text\":\"abc\"}\n")).IsPlainText, Is.True);
    }

    [TestCase("{\"instruction\":\"x\"}", "b.jsonl:2: missing field \"output\"")]
    [TestCase("{\"instruction\":\"x\",\"output\":5}", "b.jsonl:2: field \"output\" must be a string, got Number")]
    [TestCase("{\"instruction\":\"x\",\"output\":\"y\"", "b.jsonl:2: not valid JSON")]
    [TestCase("[1,2]", "b.jsonl:2: a record must be a JSON object")]
    [TestCase("{\"foo\":1}", "b.jsonl:2: cannot tell the record's format from its fields (foo)")]
    [TestCase("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}", "b.jsonl:2: the conversation has no assistant message")]
    [TestCase("{\"messages\":[{\"role\":\"wizard\",\"content\":\"hi\"}]}", "b.jsonl:2: messages[0]: unknown role \"wizard\"")]
    [TestCase("{\"text\":\"plain\"}", "b.jsonl:2: a text record in a file of instruction or chat records")]
    public void MalformedLinesNameFileAndLine(string badLine, string message)
    {
        string p = File_("b.jsonl", "{\"instruction\":\"ok\",\"output\":\"fine\"}\n" + badLine + "\n");
        var e = Assert.Throws<DataFormatException>(() => DatasetReader.Read(p));
        Assert.That(e!.Message, Does.StartWith(message));
    }

    [Test]
    public void EmptyUnknownAndMissingFilesAreErrors()
    {
        Assert.That(Assert.Throws<DataFormatException>(() => DatasetReader.Read(File_("e.jsonl", "\n\n")))!.Message, Does.Contain("no records"));
        Assert.That(Assert.Throws<DataFormatException>(() => DatasetReader.Read(File_("e.csv", "a,b")))!.Message, Does.Contain("unknown data file type \".csv\""));
        Assert.That(Assert.Throws<DataFormatException>(() => DatasetReader.Read(File_("o.json", "{\"a\":1}")))!.Message, Does.Contain("must hold an array"));
        File.WriteAllBytes(Path.Combine(_dir, "bad.txt"), [0x41, 0xC3, 0x28]);
        Assert.That(Assert.Throws<DataFormatException>(() => DatasetReader.Read(Path.Combine(_dir, "bad.txt")))!.Message, Does.Contain("not valid UTF-8"));
        Assert.Throws<FileNotFoundException>(() => DatasetReader.Read(Path.Combine(_dir, "none.jsonl")));
    }

    [Test]
    public void ParsesWordNetSynsetLines()
    {
        var s = WordNetTask.ParseLine(
            "00002684 03 n 02 object 0 physical_object 0 039 @ 00001930 n 0000 ~ 00003553 n 0000 | a tangible and visible entity; an entity that can cast a shadow; \"it was full of rackets, balls and other objects\"  ",
            "data.noun:34");
        Assert.That(s.Offset, Is.EqualTo(2684));
        Assert.That(s.PartOfSpeech, Is.EqualTo('n'));
        Assert.That(s.Words, Is.EqualTo(new[] { "object", "physical object" }));
        Assert.That(s.Definition, Is.EqualTo("a tangible and visible entity; an entity that can cast a shadow"));
        var adj = WordNetTask.ParseLine("00001740 00 a 01 able(p) 0 005 = 05207437 n 0000 | (usually followed by `to') having the necessary means", "data.adj:30");
        Assert.That(adj.Words, Is.EqualTo(new[] { "able" }));
        foreach (var (line, msg) in new[]
                 {
                     ("00001740 03 n 01 entity 0 000", "no gloss"),
                     ("0000x740 03 n 01 entity 0 000 | g", "offset"),
                     ("00001740 03 q 01 entity 0 000 | g", "ss_type"),
                     ("00001740 03 n 05 entity 0 000 | g", "w_cnt is 5"),
                 })
            Assert.That(Assert.Throws<DataFormatException>(() => WordNetTask.ParseLine(line, "data.noun:9"))!.Message,
                        Does.StartWith("data.noun:9: ").And.Contain(msg));
    }

    [Test]
    public void WordNetSplitIsDeterministicAndDisjoint()
    {
        string dict = Path.Combine(_dir, "dict");
        Directory.CreateDirectory(dict);
        var rng = new Random(3);
        foreach (string f in WordNetTask.DataFiles)
        {
            char pos = f[5];
            var lines = new List<string> { "  1 This software and database is being provided" };
            for (int i = 0; i < 400; i++)
                lines.Add($"{10000 + i * 37:D8} 03 {pos} 01 word{f}{i} 0 000 | meaning number {i} of {f}; \"an example\"");
            File.WriteAllLines(Path.Combine(dict, f), lines);
        }
        var a = WordNetTask.Build(dict, PromptTemplate.Compact, evalFraction: 0.1);
        var b = WordNetTask.Build(dict, PromptTemplate.Compact, evalFraction: 0.1);
        Assert.That(a.Train.Count + a.Eval.Count, Is.EqualTo(1600));
        Assert.That(a.Eval.Count, Is.InRange(100, 220), "about 10% held out");
        Assert.That(a.Eval.Select(e => e.Origin), Is.EqualTo(b.Eval.Select(e => e.Origin)));
        Assert.That(a.Train.Select(e => e.Origin).Intersect(a.Eval.Select(e => e.Origin)), Is.Empty);
        Assert.That(a.Train[0].Prompt, Is.EqualTo("### Instruction:\nDefine the word worddata.noun0.\n\n### Response:\n"));
        Assert.That(a.Train[0].Response, Is.EqualTo("meaning number 0 of data.noun"));
        var capped = WordNetTask.Build(dict, PromptTemplate.Compact, evalFraction: 0.1, maxTrain: 50, maxEval: 10);
        Assert.That(capped.Train, Has.Count.EqualTo(50));
        Assert.That(capped.Eval, Has.Count.EqualTo(10));
        Assert.That(capped.Eval.Select(e => e.Origin), Is.SubsetOf(a.Eval.Select(e => e.Origin)), "capping samples from the same split");
        Assert.That(capped.Train.Select(e => e.Origin.Split(':')[0]).Distinct().Count(), Is.GreaterThan(1), "the sample spans files");
    }

    [Test]
    public void TokenizationMasksThePromptAndTruncates()
    {
        var enc = new ByteEncoder();
        var ex = DataExample.Pair("abcd", "xyz", "t");
        var t = ExampleTokenizer.Tokenize(ex, enc, new TokenizeOptions())!;
        int[] a = [1, 'a' + 3, 'b' + 3, 'c' + 3, 'd' + 3, 'x' + 3, 'y' + 3, 'z' + 3, 2];
        Assert.That(t.Ids, Is.EqualTo(a));
        Assert.That(t.Labels, Is.EqualTo(new[] { -100, -100, -100, -100, -100, 'x' + 3, 'y' + 3, 'z' + 3, 2 }));
        Assert.That(t.TrainTokens, Is.EqualTo(4));
        var src = ExampleTokenizer.Tokenize(ex, enc, new TokenizeOptions { TrainOnSource = true })!;
        Assert.That(src.Labels, Is.EqualTo(src.Ids));
        var cut = ExampleTokenizer.Tokenize(ex, enc, new TokenizeOptions { MaxSourceTokens = 3, MaxTargetTokens = 2 })!;
        Assert.That(cut.Ids, Is.EqualTo(new[] { 1, 'c' + 3, 'd' + 3, 'x' + 3, 'y' + 3 }), "source keeps BOS and its end; target its start");
        Assert.That(ExampleTokenizer.Tokenize(ex, enc, new TokenizeOptions { MaxLength = 5 }), Is.Null, "nothing left to train on");

        var chat = DataExample.Chat([new ChatMessage("user", "hi"), new ChatMessage("assistant", "yo"), new ChatMessage("user", "?"), new ChatMessage("assistant", "!")], "c");
        var ct = ExampleTokenizer.Tokenize(chat, enc, new TokenizeOptions())!;
        string trained = new(ct.Ids.Zip(ct.Labels).Where(p => p.Second != -100).Select(p => p.First == 2 ? '$' : (char)(p.First - 3)).ToArray());
        Assert.That(trained, Is.EqualTo("yo$!$"));
    }

    [Test]
    public void PlainTextIsPackedIntoFullSequences()
    {
        var enc = new ByteEncoder();
        var docs = new[] { new DataExample([new Segment("abcdefg", true)], "1"), new DataExample([new Segment("hij", true)], "2") };
        var packed = ExampleTokenizer.Pack(docs, enc, 5);
        // BOS a b c d e f g EOS BOS h i j EOS = 14 tokens -> 5, 5, 4
        Assert.That(packed.Select(p => p.Length), Is.EqualTo(new[] { 5, 5, 4 }));
        Assert.That(packed[1].Ids, Is.EqualTo(new[] { 'e' + 3, 'f' + 3, 'g' + 3, 2, 1 }));
        Assert.That(packed.All(p => p.Labels.SequenceEqual(p.Ids)));
    }

    [Test]
    public void BatchesAreSeededGroupedAndCollatedWithRightPadding()
    {
        var lengths = Enumerable.Range(0, 1000).Select(i => 5 + (i * 7919) % 60).ToArray();
        var e0 = Batching.EpochBatches(lengths, 8, seed: 1, epoch: 0, groupByLength: true);
        Assert.That(Batching.EpochBatches(lengths, 8, 1, 0, true), Is.EqualTo(e0));
        Assert.That(Batching.EpochBatches(lengths, 8, 1, 1, true), Is.Not.EqualTo(e0));
        Assert.That(Batching.EpochBatches(lengths, 8, 2, 0, true), Is.Not.EqualTo(e0));
        Assert.That(e0.SelectMany(b => b).Order(), Is.EqualTo(Enumerable.Range(0, 1000)), "every example once per epoch");
        double Padding(List<int[]> batches) => batches.Sum(b => b.Max(i => lengths[i]) * b.Length - b.Sum(i => lengths[i]));
        Assert.That(Padding(e0), Is.LessThan(0.25 * Padding(Batching.EpochBatches(lengths, 8, 1, 0, false))), "grouping cuts padding");

        using var batch = Batching.Collate([new TokenizedExample([1, 5, 6], [-100, 5, 6]), new TokenizedExample([1, 7], [-100, 7])], padId: 0);
        Assert.That(batch.Ids.data<long>().ToArray(), Is.EqualTo(new long[] { 1, 5, 6, 1, 7, 0 }));
        Assert.That(batch.Labels.data<long>().ToArray(), Is.EqualTo(new long[] { -100, 5, 6, -100, 7, -100 }));
        Assert.That((batch.Tokens, batch.TrainTokens), Is.EqualTo((5L, 3L)));

        var (train, eval) = Batching.HoldOut(Enumerable.Range(0, 100).ToList(), 10);
        Assert.That(eval, Has.Count.EqualTo(10));
        Assert.That(train.Concat(eval).Order(), Is.EqualTo(Enumerable.Range(0, 100)));
        Assert.That(Batching.HoldOut(Enumerable.Range(0, 100).ToList(), 10).Eval, Is.EqualTo(eval));
    }
}
