using System.Text.Json.Nodes;

using QLoRA.IO;
using QLoRA.Models;
using QLoRA.Native;

namespace QLoRA.Tests.Models;

/// <summary>Broken and unsupported inputs give a message that names the file and the problem, never a crash or a silent wrong model.</summary>
public class BadInputTests : HuggingFaceCopyFixture
{
    private string ConfigPath => Path.Combine(Copy, "config.json");

    private void EditConfig(Action<JsonObject> edit)
    {
        var o = JsonNode.Parse(File.ReadAllText(ConfigPath))!.AsObject();
        edit(o);
        File.WriteAllText(ConfigPath, o.ToJsonString());
    }

    private Exception LoadFails() => Assert.Catch(() => ModelLoader.Load(Copy, new ModelLoadOptions { Quant = QuantSpec.None }).Dispose())!;

    [Test]
    public void TheUnbrokenCopyLoads()
    {
        using var m = ModelLoader.Load(Copy, new ModelLoadOptions { Quant = QuantSpec.None });
        Assert.That(m.Model.Config.NumLayers, Is.EqualTo(6));
    }

    [Test]
    public void UnknownArchitectureIsNamed()
    {
        EditConfig(o => { o["model_type"] = "gpt2"; o["architectures"] = new JsonArray("GPT2LMHeadModel"); });
        var e = LoadFails();
        Assert.That(e, Is.TypeOf<InvalidDataException>());
        Assert.That(e.Message, Does.Contain(ConfigPath).And.Contain("gpt2"));
    }

    [Test]
    public void MissingConfigKeyIsNamed()
    {
        EditConfig(o => o.Remove("hidden_size"));
        var e = LoadFails();
        Assert.That(e.Message, Does.Contain(ConfigPath).And.Contain("\"hidden_size\""));
    }

    [Test]
    public void UnsupportedOptionsAreNamed()
    {
        EditConfig(o => o["rope_scaling"] = new JsonObject { ["rope_type"] = "yarn", ["factor"] = 4.0 });
        Assert.That(LoadFails().Message, Does.Contain("yarn").And.Contain(ConfigPath));
        EditConfig(o => { o.Remove("rope_scaling"); o["attention_bias"] = true; });
        Assert.That(LoadFails().Message, Does.Contain("attention_bias"));
        EditConfig(o => { o["attention_bias"] = false; o["num_key_value_heads"] = 4; });
        Assert.That(LoadFails().Message, Does.Contain("num_key_value_heads").And.Contain("6"));
        EditConfig(o => { o["num_key_value_heads"] = 6; o["quantization_config"] = new JsonObject { ["quant_method"] = "gptq" }; });
        Assert.That(LoadFails().Message, Does.Contain("gptq"));
    }

    [Test]
    public void NotJsonIsReported()
    {
        File.WriteAllText(ConfigPath, "{\"model_type\": \"llama\",");
        var e = LoadFails();
        Assert.That(e.Message, Does.Contain(ConfigPath).And.Contain("JSON"));
    }

    [Test]
    public void MismatchedShapeNamesTheTensor()
    {
        // config.json says the MLP is 770 wide: the stored [768, 288] gate_proj no longer fits.
        EditConfig(o => o["intermediate_size"] = 770);
        var e = LoadFails();
        Assert.That(e.Message, Does.Contain("model.layers.0.mlp.gate_proj.weight").And.Contain("[768, 288]").And.Contain("model.safetensors"));
    }

    [Test]
    public void MissingAndUnexpectedTensorsAreNamed()
    {
        string st = Path.Combine(Copy, "model.safetensors");
        string src = Path.Combine(Original, "model.safetensors");
        Rewrite(src, st, skip: "model.layers.3.mlp.up_proj.weight");
        Assert.That(LoadFails().Message, Does.Contain("model.layers.3.mlp.up_proj.weight").And.Contain("missing"));
        Rewrite(src, st, extra: "model.layers.0.self_attn.q_proj.bias");
        Assert.That(LoadFails().Message, Does.Contain("model.layers.0.self_attn.q_proj.bias"));
    }

    private static void Rewrite(string src, string dst, string? skip = null, string? extra = null)
    {
        using var from = SafetensorsFile.Open(src);
        using var w = new SafetensorsWriter();
        foreach (var t in from.Tensors.Where(t => t.Name != skip))
            w.Add(t.Name, from.Data(t), t.Shape, borrow: true, owner: from);
        if (extra is not null) w.Add(extra, new float[288], QLoraDtype.F32, 288);
        string tmp = dst + ".new";
        w.Write(tmp);
        File.Move(tmp, dst, overwrite: true);
    }

    [Test]
    public void TruncatedOrCorruptWeightsNameTheFile()
    {
        string st = Path.Combine(Copy, "model.safetensors");
        var bytes = File.ReadAllBytes(st);
        File.WriteAllBytes(st, bytes[..(bytes.Length - 1000)]);
        var e = LoadFails();
        Assert.That(e, Is.TypeOf<QLoraException>());
        Assert.That(e.Message, Does.Contain(st));
        bytes[0] = 0xFF; bytes[5] = 0x7F; // header length far beyond the file
        File.WriteAllBytes(st, bytes);
        Assert.That(LoadFails().Message, Does.Contain(st));
        File.Delete(st);
        Assert.That(LoadFails().Message, Does.Contain(Copy).And.Contain("safetensors"));

        string bin = Path.Combine(Copy, "model.bin");
        var model = File.ReadAllBytes(TestModels.Files.ModelPath);
        File.WriteAllBytes(bin, model[..(model.Length / 3)]);
        var e2 = Assert.Catch(() => ModelLoader.Load(bin, new ModelLoadOptions { TokenizerPath = TestModels.Files.TokenizerPath }))!;
        Assert.That(e2.Message, Does.Contain(bin));
    }

    [Test]
    public void WrongTokenizerIsRefused()
    {
        // A config for a 300-token model with the 32000-token tokenizer.model: not this model's tokenizer.
        EditConfig(o => o["vocab_size"] = 300);
        var e = LoadFails();
        Assert.That(e.Message, Does.Contain("tokenizer.model").And.Contain("32000").And.Contain("300"));
        // llama2.c: the tokenizer.bin must hold exactly the model's vocabulary.
        string model = Path.Combine(Copy, "small.bin");
        SyntheticLlama2c.Write(model, 32, 48, 1, 2, 2, 300, 16, true, 2);
        var e2 = Assert.Catch(() => ModelLoader.Load(model, new ModelLoadOptions { TokenizerPath = TestModels.Files.TokenizerPath }))!;
        Assert.That(e2.Message, Does.Contain("tokenizer.bin"));
    }

    [Test]
    public void MissingPathsAreReported()
    {
        var e = Assert.Throws<FileNotFoundException>(() => ModelLoader.Load(Path.Combine(Copy, "nope")));
        Assert.That(e!.Message, Does.Contain("nope"));
        File.Delete(ConfigPath);
        Assert.That(LoadFails().Message, Does.Contain("config.json"));
    }
}
