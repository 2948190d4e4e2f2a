using System.Text;

namespace QLoRA.BindingGen;

/// <summary>Writes tests/QLoRA.Native.Tests/Generated/AbiLayoutTests.g.cs.</summary>
internal static class TestEmitter
{
    public static string AbiLayoutTests(AbiModel model, string recipe)
    {
        var types = new TypeMap(model);
        var w = new CodeWriter();
        foreach (string line in recipe.Split('\n')) w.Line("// " + line);
        w.Line();
        w.Line("#nullable enable");
        w.Line("using System.Runtime.InteropServices;");
        w.Line("using System.Text;");
        w.Line("using NUnit.Framework;");
        w.Line("using QLoRA.Native.Interop;");
        w.Line();
        w.Line("namespace QLoRA.Native.Tests.Generated;");
        w.Line();
        w.Doc("Every struct size and field offset, enum size and value, handle and callback size, integer constant and export of the C# bindings, checked against the native library's own answers (qlora_abi_*).");
        w.Line("[TestFixture]");
        w.Open("public sealed unsafe class AbiLayoutTests");
        w.Line("private static byte[] Utf8z(string s) => Encoding.UTF8.GetBytes(s + \"\\0\");");
        w.Line();
        w.Open("private static nuint NativeSize(string type)");
        w.Line("nuint value;");
        w.Line("fixed (byte* t = Utf8z(type)) QLoraException.ThrowIfFailed(NativeMethods.qlora_abi_struct_size(t, &value));");
        w.Line("return value;");
        w.Close();
        w.Line();
        w.Open("private static nuint NativeOffset(string type, string field)");
        w.Line("nuint value;");
        w.Line("fixed (byte* t = Utf8z(type)) fixed (byte* f = Utf8z(field)) QLoraException.ThrowIfFailed(NativeMethods.qlora_abi_field_offset(t, f, &value));");
        w.Line("return value;");
        w.Close();
        w.Line();
        w.Open("private static long NativeValue(string constant)");
        w.Line("long value;");
        w.Line("fixed (byte* c = Utf8z(constant)) QLoraException.ThrowIfFailed(NativeMethods.qlora_abi_enum_value(c, &value));");
        w.Line("return value;");
        w.Close();

        foreach (StructDef s in model.Structs)
        {
            w.Line();
            w.Line("[Test]");
            w.Open($"public void Struct_{Identifier(s.CName)}()");
            w.Line($"{s.CsName} value = default;");
            w.Line("byte* origin = (byte*)&value;");
            w.Open("using (Assert.EnterMultipleScope())");
            w.Line($"Assert.That((nuint)sizeof({s.CsName}), Is.EqualTo(NativeSize(\"{s.CName}\")), \"sizeof({s.CName})\");");
            foreach (FieldDef f in s.Fields)
            {
                bool isFixed = types.MapField(f.Type, f.CName).FixedLength is not null;
                string address = isFixed ? $"(byte*)value.{f.CsName}" : $"(byte*)&value.{f.CsName}";
                w.Line($"Assert.That((nuint)({address} - origin), Is.EqualTo(NativeOffset(\"{s.CName}\", \"{f.CName}\")), \"offsetof({s.CName}, {f.CName})\");");
            }
            w.Close();
            w.Close();
        }
        foreach (EnumDef e in model.Enums)
        {
            w.Line();
            w.Line("[Test]");
            w.Open($"public void Enum_{Identifier(e.CName)}()");
            w.Open("using (Assert.EnterMultipleScope())");
            w.Line($"Assert.That((nuint)sizeof({e.CsName}), Is.EqualTo(NativeSize(\"{e.CName}\")), \"sizeof({e.CName})\");");
            foreach (EnumConstant c in e.Constants)
                w.Line($"Assert.That((long){e.CsName}.{c.CsName}, Is.EqualTo(NativeValue(\"{c.CName}\")), \"{c.CName}\");");
            w.Close();
            w.Line($"Assert.That(Enum.GetValues<{e.CsName}>(), Has.Length.EqualTo({e.Constants.Count}), \"members of {e.CsName}\");");
            w.Close();
        }
        foreach (var (cName, csName) in model.Handles.Select(h => (h.CName, h.CsName)).Concat(model.Callbacks.Select(c => (c.CName, c.CsName))))
        {
            w.Line();
            w.Line("[Test]");
            w.Line($"public void Size_{Identifier(cName)}() =>");
            w.Line($"    Assert.That((nuint)sizeof({csName}), Is.EqualTo(NativeSize(\"{cName}\")), \"sizeof({cName})\");");
        }
        if (model.Constants.Count > 0)
        {
            w.Line();
            w.Line("[Test]");
            w.Open("public void Constants()");
            w.Open("using (Assert.EnterMultipleScope())");
            foreach (ConstantDef c in model.Constants)
                w.Line($"Assert.That((long)QLoraConstants.{CSharpEmitter.ConstantName(c.CName)}, Is.EqualTo(NativeValue(\"{c.CName}\")), \"{c.CName}\");");
            w.Close();
            w.Close();
        }
        w.Line();
        foreach (FunctionDef f in model.Functions) w.Line($"[TestCase(\"{f.CName}\")]");
        w.Open("public void Exported(string function)");
        w.Line("Assert.That(NativeLibrary.TryGetExport(QLoraNativeLibrary.Load(), function, out _), Is.True,");
        w.Line("            $\"{function} is declared in qlora.h but {QLoraNativeLibrary.LoadedPath} does not export it\");");
        w.Close();
        w.Close();
        return w.ToString();
    }

    private static string Identifier(string cName)
    {
        var sb = new StringBuilder();
        foreach (char c in cName) sb.Append(char.IsLetterOrDigit(c) ? c : '_');
        return sb.ToString();
    }
}
