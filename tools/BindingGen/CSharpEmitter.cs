using System.Globalization;

namespace QLoRA.BindingGen;

/// <summary>Writes the C# side: bindings/QLoRA.Native/Generated/*.g.cs.</summary>
internal sealed class CSharpEmitter(AbiModel model, string recipe)
{
    public const string InteropNamespace = "QLoRA.Native.Interop";
    private readonly TypeMap _types = new(model);

    private CodeWriter Begin(string ns, params string[] usings) => BeginWith(ns, null, usings);

    private CodeWriter BeginWith(string ns, string? preamble, params string[] usings)
    {
        var w = new CodeWriter();
        foreach (string line in recipe.Split('\n')) w.Line("// " + line);
        w.Line();
        w.Line("#nullable enable");
        foreach (string u in usings) w.Line($"using {u};");
        if (usings.Length > 0) w.Line();
        if (preamble is not null) w.Line(preamble).Line();
        w.Line($"namespace {ns};");
        return w;
    }

    private static string Summary(string doc, string fallback) => doc.Length > 0 ? doc : fallback;

    public string Enums()
    {
        CodeWriter w = Begin("QLoRA.Native");
        foreach (EnumDef e in model.Enums)
        {
            w.Line();
            w.Doc(Summary(e.Doc, $"The C enum {e.CName}."), $"C type {CodeWriter.Code(e.CName)}.");
            w.Open($"public enum {e.CsName} : {e.Underlying}");
            foreach (EnumConstant c in e.Constants)
            {
                w.Doc(Summary(c.Doc, $"{c.CName}."), CodeWriter.Code($"{c.CName} = {c.Value}"));
                w.Line($"{c.CsName} = {c.Value.ToString(CultureInfo.InvariantCulture)},");
            }
            w.Close();
        }
        return w.ToString();
    }

    public string Constants()
    {
        CodeWriter w = Begin(InteropNamespace);
        w.Line();
        w.Doc("Integer constants of qlora.h: its object-like #defines and anonymous enum constants.");
        w.Open("public static class QLoraConstants");
        foreach (ConstantDef c in model.Constants)
        {
            string type = c.Value is >= int.MinValue and <= int.MaxValue ? "int" : "long";
            w.Doc(Summary(c.Doc, $"{c.CName}."), CodeWriter.Code($"{c.CName} = {c.Value}"));
            w.Line($"public const {type} {ConstantName(c.CName)} = {c.Value.ToString(CultureInfo.InvariantCulture)};");
        }
        w.Close();
        return w.ToString();
    }

    public static string ConstantName(string cName) =>
        Naming.Pascal(cName.StartsWith("QLORA_", StringComparison.Ordinal) ? cName[6..] : cName);

    public string Structs()
    {
        CodeWriter w = Begin(InteropNamespace, "System.Runtime.InteropServices");
        foreach (StructDef s in model.Structs)
        {
            w.Line();
            w.Doc(Summary(s.Doc, $"The C struct {s.CName}."), $"C type {CodeWriter.Code(s.CName)}; layout checked against the native library by the generated binding tests.");
            w.Line("[StructLayout(LayoutKind.Sequential)]");
            w.Open($"public unsafe partial struct {s.CsName}");
            foreach (FieldDef f in s.Fields)
            {
                var (type, fixedLength) = _types.MapField(f.Type, $"{s.CName}.{f.CName}");
                w.Doc(Summary(f.Doc, $"{s.CName}.{f.CName}."), CodeWriter.Code($"{f.CSpelling} {f.CName}"));
                w.Line(fixedLength is { } n ? $"public fixed {type} {f.CsName}[{n}];" : $"public {type} {f.CsName};");
            }
            w.Close();
        }
        return w.ToString();
    }

    public string Callbacks()
    {
        CodeWriter w = Begin(InteropNamespace);
        foreach (CallbackDef c in model.Callbacks)
        {
            string fp = _types.FunctionPointer(c.Signature, c.CName);
            w.Line();
            w.Doc(Summary(c.Doc, $"The C callback type {c.CName}."), $"C: {CodeWriter.Code($"typedef {c.Signature.Return} (*{c.CName})({string.Join(", ", c.Signature.Parameters)})")}.");
            w.Open($"public readonly unsafe struct {c.CsName}");
            w.Doc("The unmanaged function pointer (null when unset).");
            w.Line($"public readonly {fp} Pointer;");
            w.Line();
            w.Doc("Wraps a function pointer, e.g. the address of an [UnmanagedCallersOnly] method.");
            w.Line($"public {c.CsName}({fp} pointer) => Pointer = pointer;");
            w.Close();
        }
        return w.ToString();
    }

    /// <summary>
    /// The function that releases a handle: <c>void qlora_x_free(qlora_x_t)</c>, or the one other
    /// <c>void *_free(qlora_x_t)</c> (e.g. <c>qlora_q4_free</c> for <c>qlora_q4_tensor_t</c>).
    /// </summary>
    public FunctionDef? FreeFunction(HandleDef h)
    {
        var candidates = model.Functions.Where(f => f.CName.EndsWith("_free", StringComparison.Ordinal)
                                                    && f.Parameters.Count == 1
                                                    && f.Parameters[0].Type == new CType.Named(h.CName)
                                                    && f.Return == new CType.Named("void")).ToList();
        if (candidates.FirstOrDefault(f => f.CName == h.FreeFunctionName) is { } exact) return exact;
        if (candidates.Count > 1)
            throw new BindingGenException($"{h.CName} has several free functions ({string.Join(", ", candidates.Select(c => c.CName))}); name one {h.FreeFunctionName}");
        return candidates.FirstOrDefault();
    }

    public string Handles()
    {
        CodeWriter w = Begin(InteropNamespace, "System.Runtime.InteropServices");
        foreach (HandleDef h in model.Handles)
        {
            FunctionDef? free = FreeFunction(h);
            w.Line();
            w.Doc(Summary(h.Doc, $"The opaque handle {h.CName}."),
                  $"C: {CodeWriter.Code($"typedef struct {h.Tag} * {h.CName}")}; a raw, non-owning pointer. " +
                  (free is null ? $"qlora.h declares no void *_free({h.CName}), so no SafeHandle owns it."
                                : $"Owned by <see cref=\"{h.SafeHandleName}\"/>."));
            w.Line($"public readonly record struct {h.CsName}(nint Value)");
            w.Open();
            w.Doc("True for the NULL handle.");
            w.Line("public bool IsNull => Value == 0;");
            w.Close();
        }
        foreach (HandleDef h in model.Handles)
        {
            FunctionDef? free = FreeFunction(h);
            if (free is null) continue;
            w.Line();
            w.Doc($"Owns a {h.CName}: releasing it calls {free.CName}. Pass it to native calls through Lease().",
                  $"Generated from the pairing of {CodeWriter.Code(h.CName)} with {CodeWriter.Code(free.CName)}.");
            w.Line($"public sealed partial class {h.SafeHandleName} : QLoraSafeHandle");
            w.Open();
            w.Doc("Takes a reference for the duration of native calls (dispose the lease afterwards); throws ObjectDisposedException once the handle is disposed.");
            w.Line($"public HandleLease<{h.CsName}> Lease() => new(this, new {h.CsName}(AddRef()));");
            w.Line();
            w.Doc("Takes ownership of a handle a native call returned; optionally keeps a parent handle alive until this one is released.");
            w.Line($"public void Attach({h.CsName} raw, SafeHandle? parent = null) => TakeOwnership(raw.Value, parent);");
            w.Line();
            w.Line("/// <inheritdoc/>");
            w.Line($"protected override void Free(nint raw) => NativeMethods.{free.CName}(new {h.CsName}(raw));");
            w.Close();
        }
        return w.ToString();
    }

    public string NativeMethods()
    {
        // Blittable structs with enum and pointer fields pass through P/Invoke as they are.
        CodeWriter w = BeginWith(InteropNamespace, "[assembly: DisableRuntimeMarshalling]",
                             "System.Runtime.CompilerServices", "System.Runtime.InteropServices");
        w.Line();
        w.Doc("Every QLORA_API function of qlora.h as a source-generated, blittable P/Invoke (C names kept).",
              "Statuses are returned, not thrown: pass them to QLoraException.ThrowIfFailed right after the call.");
        w.Open("public static unsafe partial class NativeMethods");
        w.Doc("Name of the native library; QLoraNativeLibrary resolves it per RID and backend.");
        w.Line("public const string LibraryName = \"qlora\";");
        foreach (FunctionDef f in model.Functions)
        {
            string ret = _types.Map(f.Return, $"{f.CName} return", allowVoid: true);
            string ps = string.Join(", ", f.Parameters.Select(p => $"{_types.Map(p.Type, $"{f.CName}({p.CName})")} {Naming.Parameter(p.CName)}"));
            w.Line();
            w.Doc(Summary(f.Doc, $"{f.CName}."), CodeWriter.Code(f.CSignature));
            w.Line($"[LibraryImport(LibraryName, EntryPoint = \"{f.CName}\")]");
            w.Line("[UnmanagedCallConv(CallConvs = [typeof(CallConvCdecl)])]");
            w.Line($"public static partial {ret} {f.CName}({ps});");
        }
        w.Close();
        return w.ToString();
    }
}
